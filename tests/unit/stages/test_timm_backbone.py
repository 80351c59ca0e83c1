"""`timm:<name>` backbones through the stages: a timm architecture with ImageNet weights from a
local file (features.weights_dir) embeds, ranks and ships like the EfficientNet-Lite ones. A tiny
timm model with random weights stands in for the downloaded file; 32 px, CPU, no network.
(Loading the weights file itself: tests/unit/models/test_backbones.py.)"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from graft.core.config import ConfigError
from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, read_manifest
from graft.evaluation.transferability import rank_backbones
from graft.models.checkpoint import load_checkpoint
from graft.models.inference import run_model
from graft.stages import features, finetune
from tests.fixtures import (
    SIZE,
    TIMM_ARCH,
    TIMM_NAME,
    make_split_project,
    save_timm_weights,
    timm_params,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The tiny pattern project with the weights file in its default weights/ folder."""
    layout = make_split_project(tmp_path_factory.mktemp("timm"),
                                {"train": 4, "val": 2, "test": 2}, size=SIZE)
    save_timm_weights(layout.root / "weights")
    return layout


def test_features_and_linear_probe_ship_a_checkpoint_that_rebuilds(
        project: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = features.run(timm_params(), project)
    assert metrics["backbone"] == TIMM_NAME
    assert metrics["store"] == f"data/features/timm-{TIMM_ARCH}-32.npz"
    assert (project.root / metrics["store"]).exists()

    saved = {}

    def keep_a_copy(path, model, *args, **kwargs):
        saved["model"] = copy.deepcopy(model)
        return real_save(path, model, *args, **kwargs)

    real_save = finetune.save_checkpoint
    monkeypatch.setattr(finetune, "save_checkpoint", keep_a_copy)
    finetune.run(timm_params(), project)

    model, meta = load_checkpoint(project.model)
    assert meta["backbone"] == TIMM_NAME
    df = read_manifest(project.manifest)
    paths = absolute_paths(df.loc[df["split"] == "test"], project.manifest)
    pre, cpu = meta["preprocessing"], torch.device("cpu")
    assert np.allclose(run_model(model, paths, pre, device=cpu),
                       run_model(saved["model"], paths, pre, device=cpu), atol=1e-5)


def test_auto_strategy_skips_lp_ft_for_a_timm_backbone(project: Layout) -> None:
    features.run(timm_params(), project)
    metrics = finetune.run(timm_params(strategy="auto"), project)
    lp_ft = next(c for c in metrics["auto"]["candidates"] if c["strategy"] == "lp_ft")
    assert "EfficientNet-Lite" in lp_ft["skipped"]


def test_rank_scores_a_timm_backbone_with_the_lite_ones(project: Layout) -> None:
    result = rank_backbones(timm_params(), project, ["efficientnet_lite0", TIMM_NAME])
    assert {r["backbone"] for r in result["ranking"]} == {"efficientnet_lite0", TIMM_NAME}
    assert all(np.isfinite(r["logme"]) for r in result["ranking"])


def test_network_strategies_need_an_efficientnet_lite_backbone(project: Layout) -> None:
    with pytest.raises(ConfigError, match="finetune.strategy = 'finetune' needs an EfficientNet"):
        finetune.run(timm_params(strategy="finetune"), project)
