"""`features.backbone: auto`: the features stage embeds with every backbone, keeps the top LogME
one and records it in metrics/features.json, where finetune reads it (tiny project, 32 px)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from graft.core.config import ConfigError, load_params
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.store import FeaturesError, load_features, resolve_backbone, with_backbone
from graft.evaluation.transferability import logme, training_rows
from graft.models.backbones import BACKBONES
from graft.models.checkpoint import load_checkpoint
from graft.stages import features, finetune
from tests.fixtures import SIZE, auto_params, make_split_project

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, dict]:
    """The tiny project after the features stage with `auto` (run once for the module)."""
    layout = make_split_project(tmp_path_factory.mktemp("auto"),
                                {"train": 4, "val": 2, "test": 3}, size=SIZE)
    return layout, features.run(auto_params(), layout)


def test_auto_embeds_with_every_backbone_and_keeps_the_top_logme_one(project) -> None:
    layout, metrics = project
    for name in BACKBONES:
        assert (layout.features / f"{name}-{SIZE}.npz").exists(), name

    df = read_manifest(layout.manifest)
    train, y = training_rows(df, layout.manifest)
    recomputed = {name: logme(load_features(
        layout, with_backbone(auto_params(), name), train), y) for name in BACKBONES}
    chosen = max(recomputed, key=recomputed.get)
    assert metrics["backbone"] == chosen
    assert json.loads(layout.metrics("features").read_text()) == metrics

    selection = metrics["backbone_selection"]
    assert selection["method"] == "logme"
    assert [r["backbone"] for r in selection["ranking"]] == sorted(
        BACKBONES, key=lambda name: -recomputed[name])
    assert all({"logme", "h_score"} <= set(r) for r in selection["ranking"])
    assert metrics["store"] == f"data/features/{chosen}-{SIZE}.npz"
    assert metrics["n_computed"] == len(BACKBONES) * len(df)


def test_finetune_uses_the_chosen_backbone(project) -> None:
    layout, metrics = project
    assert resolve_backbone(auto_params(), layout) == metrics["backbone"]
    finetune.run(auto_params(), layout)
    _, meta = load_checkpoint(layout.model)
    assert meta["backbone"] == metrics["backbone"]


def test_a_choice_made_at_another_image_size_is_refused(project) -> None:
    layout, _ = project
    with pytest.raises(FeaturesError,
                       match=r"features\.json.*image_size 32.*auto at 64.*run the features stage"):
        resolve_backbone(auto_params(image_size=64), layout)


def test_an_unknown_backbone_is_refused_naming_the_file_and_key(tmp_path: Path) -> None:
    layout = make_split_project(tmp_path, {"train": 1}, size=SIZE)
    layout.params.write_text("features: {backbone: efficientnet_b0, image_size: 32}\n")
    params = load_params(layout.params)  # a string: the stages check the name
    message = re.escape(f"{layout.params}: features.backbone = 'efficientnet_b0' must be one of "
                        f"{', '.join(BACKBONES)}, auto")
    with pytest.raises(ConfigError, match=message):
        features.run(params, layout)
    with pytest.raises(ConfigError, match=message):
        finetune.run(params, layout)
