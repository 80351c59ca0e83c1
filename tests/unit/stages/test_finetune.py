"""The finetune stage on the tiny project (3 classes of coloured patterns, 4 training and 3
validation images per class, Lite0 at 32 px): it saves one network that computes the fitted head,
writes its outputs atomically, and refuses bad params and bad manifests before any work.
(Each strategy: tests/unit/strategies/; the training loop: strategies/test_training.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.core.config import ConfigError
from graft.core.layout import Layout
from graft.data.manifest import ManifestError, absolute_paths, read_manifest, write_manifest
from graft.embeddings.store import load_features
from graft.models.checkpoint import load_checkpoint
from graft.models.heads import head_logits
from graft.models.inference import run_model
from graft.stages import finetune
from graft.strategies import training
from tests.fixtures import CLASSES, FAST, ensemble_params, finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("section", [
    {"strategy": "svm", "svm_c_grid": [0.1, 1.0], "svm_gamma_grid": [1.0]},
    {"strategy": "prototype", "feature_norm": "center_l2"},
    {"strategy": "linear_probe", "feature_norm": "center_l2", "c_grid": [0.1, 1.0]}])
def test_stage_saves_one_network_that_computes_the_fitted_head(tiny_layout: Layout,
                                                                 section: dict) -> None:
    layout = tiny_layout
    params = finetune_params(**section)
    metrics = finetune.run(params, layout)
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.9  # chance: 1/3
    assert metrics["feature_norm"] == section.get("feature_norm", "none")
    assert json.loads(layout.metrics("finetune").read_text()) == metrics
    if section["strategy"] != "linear_probe":
        assert "temperature" in metrics["setting"] and metrics["candidates"]
    model, meta = load_checkpoint(layout.model)  # rebuilt from the saved head spec
    df = read_manifest(layout.manifest)
    feats = load_features(layout, params, df)
    from_cache = head_logits(model.classifier, feats)
    from_images = run_model(model, absolute_paths(df, layout.manifest), meta["preprocessing"],
                            batch_size=8, device=torch.device("cpu"))
    np.testing.assert_allclose(from_images, from_cache, atol=1e-3, rtol=1e-4)
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert (from_images.argmax(1) == y).mean() >= 0.9


def test_a_crash_in_training_leaves_the_previous_outputs_untouched(
    tiny_layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = tiny_layout
    layout.models.mkdir()
    layout.model.write_bytes(b"the previous model")
    layout.metrics("finetune").parent.mkdir(exist_ok=True)
    layout.metrics("finetune").write_text('{"previous": true}\n')

    def crash(*args: object) -> float:
        raise RuntimeError("simulated crash mid-training")

    monkeypatch.setattr(training, "train_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune.run(finetune_params(strategy="finetune", **FAST), layout)
    assert layout.model.read_bytes() == b"the previous model"
    assert layout.metrics("finetune").read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in layout.models.iterdir()) == ["model.pt"]  # no temporary left


@pytest.mark.parametrize(("params", "key"), [
    (finetune_params(strategy="fine_tune"), "strategy"),
    (finetune_params(strategy="finetune", feature_norm="l2"), "feature_norm"),
    (finetune_params(strategy="lp_ft", feature_norm="l2"), "feature_norm"),
    (finetune_params(ensemble_strategies=["lp_ft"]), "ensemble_strategies"),
    (ensemble_params(ensemble_backbones=["resnet50"]), "ensemble_backbones"),
], ids=["unknown-strategy", "finetune-l2", "lp_ft-l2", "ensemble-of-lp_ft", "resnet50"])
def test_names_and_rules_only_the_registries_know_are_refused_before_any_work(
        params, key: str, tmp_path: Path) -> None:
    # graft.core.config checked types and ranges at load (tests/unit/core/test_config.py); the
    # stage checks the strategy registry's names and rules, naming its params file
    layout = Layout(tmp_path)
    with pytest.raises(ConfigError, match=f"{layout.params}: finetune.{key} "):
        finetune.run(params, layout)  # no manifest: never reached


def test_validation_labels_must_have_training_images(tiny_layout: Layout) -> None:
    df = read_manifest(tiny_layout.manifest)
    df.loc[df["split"] == "val", "label"] = "zebra"
    write_manifest(tiny_layout.manifest, df)
    with pytest.raises(ManifestError, match=r"manifest.csv: validation label.*zebra"):
        finetune.run(finetune_params(), tiny_layout)


def test_fewer_than_two_classes_is_a_clear_error(tiny_layout: Layout) -> None:
    from graft.strategies.base import FinetuneError

    df = read_manifest(tiny_layout.manifest)
    write_manifest(tiny_layout.manifest, df[df["label"] == "circle"])
    with pytest.raises(FinetuneError, match=r"manifest.csv: training rows have 1 class"):
        finetune.run(finetune_params(), tiny_layout)
