"""`timm:<name>` backbones: a timm architecture with ImageNet weights from a local file
(features.weights_dir) loads, embeds, ranks and ships like the EfficientNet-Lite ones. A tiny
timm model with random weights stands in for the downloaded file; 32 px, CPU, no network."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from graft import features, finetune, rank
from graft.backbones import WeightsError, create_model, get_spec
from graft.checkpoint import load_checkpoint
from graft.config import ConfigError, FeaturesParams, params_from_dict
from graft.inference import run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest
from tests.conftest import make_split_project
from tests.unit import test_finetune as shared

ARCH = "test_convnext"  # 0.27 M parameters; its timm head is the dotted `head.fc`
NAME = f"timm:{ARCH}"
SIZE = 32


def save_weights(folder: Path, suffix: str = ".pth") -> nn.Module:
    """A random `ARCH` (with its 1000-class head) saved as folder/<ARCH><suffix>; returned."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save = save_file if suffix == ".safetensors" else torch.save
    save(model.state_dict(), folder / f"{ARCH}{suffix}")
    return model


def timm_params(**finetune_section: object):
    return params_from_dict({"features": {"backbone": NAME, "image_size": SIZE},
                             "finetune": {"strategy": "linear_probe", "c_grid": [1.0],
                                          **finetune_section}})


one_thread = shared.one_thread  # autouse, module scope: one intra-op thread (see there)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The tiny pattern project with the weights file in its default weights/ folder."""
    layout = make_split_project(tmp_path_factory.mktemp("timm"),
                                {"train": 4, "val": 2, "test": 2}, size=SIZE)
    save_weights(layout.root / "weights")
    return layout


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_create_model_loads_exactly_the_local_weights(tmp_path: Path, suffix: str) -> None:
    source = save_weights(tmp_path, suffix)
    model = create_model(NAME, 3, weights_dir=tmp_path)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 3
    assert torch.equal(model.body.stem[0].weight, source.stem[0].weight)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():  # num_classes=1000 keeps the file's head: the whole network
        assert torch.allclose(create_model(NAME, 1000, weights_dir=tmp_path).eval()(x),
                              source(x), atol=1e-5)
    assert get_spec(NAME).mean == tuple(source.pretrained_cfg["mean"])
    rebuilt = create_model(NAME, 3, pretrained=False)  # a checkpoint's rebuild needs no file
    assert rebuilt.num_features == model.classifier.in_features


def test_features_and_linear_probe_ship_a_checkpoint_that_rebuilds(
        project: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = features.run(timm_params(), project)
    assert metrics["backbone"] == NAME and metrics["store"] == f"data/features/timm-{ARCH}-32.npz"
    assert (project.root / metrics["store"]).exists()

    saved = {}
    def keep_a_copy(path, model, *args, **kwargs):
        saved["model"] = copy.deepcopy(model)
        return real_save(path, model, *args, **kwargs)
    real_save = finetune.save_checkpoint
    monkeypatch.setattr(finetune, "save_checkpoint", keep_a_copy)
    finetune.run(timm_params(), project)

    model, meta = load_checkpoint(project.model)
    assert meta["backbone"] == NAME
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
    result = rank.run(timm_params(), project, ["efficientnet_lite0", NAME])
    assert {r["backbone"] for r in result["ranking"]} == {"efficientnet_lite0", NAME}
    assert all(np.isfinite(r["logme"]) for r in result["ranking"])


def test_a_missing_weights_file_names_the_paths_tried(tmp_path: Path) -> None:
    tried = re.escape(f"{tmp_path / ARCH}.safetensors")
    with pytest.raises(WeightsError, match=f"{tried}.*downloads nothing"):
        create_model(NAME, 0, weights_dir=tmp_path)


def test_weights_of_other_shapes_name_the_key(tmp_path: Path) -> None:
    state = save_weights(tmp_path).state_dict()
    state["stem.0.weight"] = torch.zeros(1, 3, 2, 2)
    torch.save(state, tmp_path / f"{ARCH}.pth")
    with pytest.raises(WeightsError, match=r"stem\.0\.weight is \(1, 3, 2, 2\)"):
        create_model(NAME, 0, weights_dir=tmp_path)


def test_an_unknown_timm_name_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="features.backbone = 'timm:no_such_net'"):
        features.check_params(FeaturesParams(backbone="timm:no_such_net"))


def test_network_strategies_need_an_efficientnet_lite_backbone(project: Layout) -> None:
    with pytest.raises(ConfigError, match="finetune.strategy = 'finetune' needs an EfficientNet"):
        finetune.run(timm_params(strategy="finetune"), project)
