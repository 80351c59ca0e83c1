"""The `ensemble` strategy (graft.strategies.ensemble, graft.models.ensemble): members fitted like
their strategies alone, one network that averages their probabilities, rebuilt from the
checkpoint and exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, read_manifest
from graft.deploy.onnx_export import to_onnx
from graft.embeddings.store import load_features, with_backbone
from graft.models.checkpoint import load_checkpoint
from graft.models.ensemble import Ensemble
from graft.models.heads import head_logits
from graft.models.inference import run_model
from graft.stages import features, finetune
from tests.fixtures import (
    CLASSES,
    ENSEMBLE_BACKBONES,
    SIZE,
    copy_stage_outputs,
    ensemble_params,
    make_split_project,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = make_split_project(tmp_path_factory.mktemp("ensemble"),
                                {"train": 4, "val": 3, "test": 3})
    features.run(ensemble_params(), layout)  # embeds with every ensemble backbone
    return layout.root


@pytest.fixture()
def layout(base: Path, tmp_path: Path) -> Layout:
    return copy_stage_outputs(base, tmp_path)


def test_features_stage_embeds_with_every_ensemble_backbone(layout: Layout) -> None:
    for name in ENSEMBLE_BACKBONES:
        assert (layout.features / f"{name}-{SIZE}.npz").exists()


def test_ensemble_learns_and_averages_its_members_probabilities(layout: Layout) -> None:
    params = ensemble_params()
    metrics = finetune.run(params, layout)
    assert metrics["strategy"] == "ensemble" and metrics["val_accuracy"] is None
    members = metrics["members"]
    assert [(m["backbone"], m["strategy"]) for m in members] == [
        (b, s) for b in ENSEMBLE_BACKBONES for s in ("linear_probe", "prototype")]
    assert all(m["val_accuracy"] is not None for m in members)
    assert metrics["train_accuracy"] >= 0.9  # chance: 1/3

    model, meta = load_checkpoint(layout.model)  # rebuilt from the checkpoint's network spec
    assert isinstance(model, Ensemble) and len(model.heads) == 4
    assert meta["backbone"] == "ensemble:" + "+".join(ENSEMBLE_BACKBONES)
    df = read_manifest(layout.manifest)
    feats = {b: load_features(layout, with_backbone(params, b), df) for b in ENSEMBLE_BACKBONES}
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

    finetune.run(ensemble_params(ensemble_strategies=["prototype"]), layout)
    model, _ = load_checkpoint(layout.model)
    to_onnx(model, tmp_path / "m.onnx", SIZE, 17)
    image = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(image)).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": image})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
