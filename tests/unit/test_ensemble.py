"""The `ensemble` strategy (graft.ensemble): members fitted like their strategies alone, one
network that averages their probabilities, rebuilt from the checkpoint and exported to ONNX."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from graft import ensemble, features, finetune
from graft.checkpoint import load_checkpoint
from graft.config import ConfigError, params_from_dict
from graft.export import to_onnx
from graft.heads import head_logits
from graft.inference import run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest
from tests.conftest import copy_stage_outputs, make_split_project

SIZE = 32  # pixels
BACKBONES = ["efficientnet_lite0", "efficientnet_lite1"]
CLASSES = ["circle", "square", "stripes"]


def tiny_params(**section: object):
    return params_from_dict({
        "features": {"backbone": BACKBONES[0], "image_size": SIZE},
        "finetune": {"strategy": "ensemble", "ensemble_backbones": BACKBONES,
                     "ensemble_strategies": ["linear_probe", "prototype"], "c_grid": [0.1, 1.0],
                     **section}})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = make_split_project(tmp_path_factory.mktemp("ensemble"),
                                {"train": 4, "val": 3, "test": 3})
    features.run(tiny_params(), layout)  # embeds with every ensemble backbone
    return layout.root


@pytest.fixture()
def layout(base: Path, tmp_path: Path) -> Layout:
    return copy_stage_outputs(base, tmp_path)


def test_features_stage_embeds_with_every_ensemble_backbone(layout: Layout) -> None:
    for name in BACKBONES:
        assert (layout.features / f"{name}-{SIZE}.npz").exists()


def test_ensemble_learns_and_averages_its_members_probabilities(layout: Layout) -> None:
    params = tiny_params()
    metrics = finetune.run(params, layout)
    assert metrics["strategy"] == "ensemble" and metrics["val_accuracy"] is None
    members = metrics["members"]
    assert [(m["backbone"], m["strategy"]) for m in members] == [
        (b, s) for b in BACKBONES for s in ("linear_probe", "prototype")]
    assert all(m["val_accuracy"] is not None for m in members)
    assert metrics["train_accuracy"] >= 0.9  # chance: 1/3

    model, meta = load_checkpoint(layout.model)  # rebuilt from the checkpoint's network spec
    assert isinstance(model, ensemble.Ensemble) and len(model.heads) == 4
    assert meta["backbone"] == "ensemble:" + "+".join(BACKBONES)
    df = read_manifest(layout.manifest)
    feats = {b: features.load_features(layout, dataclasses.replace(
        params, features=dataclasses.replace(params.features, backbone=b)), df) for b in BACKBONES}
    # the ensemble's softmax is the mean of the members' softmax
    member_probs = [torch.softmax(torch.from_numpy(head_logits(head, feats[b])), 1).numpy()
                    for head, b in zip(model.heads, model.member_bodies, strict=True)]
    ours = torch.softmax(torch.from_numpy(model.head_logits(feats)), 1).numpy()
    np.testing.assert_allclose(ours, np.mean(member_probs, axis=0), atol=1e-9)
    # and the network computes from image files what the heads compute from the cache
    from_images = run_model(model, absolute_paths(df, layout.manifest), meta["preprocessing"],
                            batch_size=8, device=torch.device("cpu"))
    np.testing.assert_allclose(from_images, model.head_logits(feats), atol=1e-3, rtol=1e-4)
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    test = (df["split"] == "test").to_numpy()
    assert (from_images[test].argmax(1) == y[test]).mean() >= 0.75


def test_ensemble_exports_to_onnx_with_parity(layout: Layout, tmp_path: Path) -> None:
    import onnxruntime as ort

    finetune.run(tiny_params(ensemble_strategies=["prototype"]), layout)
    model, _ = load_checkpoint(layout.model)
    to_onnx(model, tmp_path / "m.onnx", SIZE, 17)
    image = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(image)).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": image})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("section", [{"ensemble_backbones": []},
                                     {"ensemble_backbones": ["resnet50"]},
                                     {"ensemble_strategies": ["lp_ft"]}])
def test_bad_ensemble_params_are_rejected(section: dict, tmp_path: Path) -> None:
    key = next(iter(section))
    with pytest.raises(ConfigError, match=f"finetune.{key} "):
        finetune.run(tiny_params(**section), Layout(tmp_path))
