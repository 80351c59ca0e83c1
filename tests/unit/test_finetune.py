"""The finetune stage: linear probe and fine-tuning on a tiny synthetic project (3 classes of
coloured patterns, 4 training and 3 validation images per class, Lite0 at 32 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from graft import augment, features, finetune, training
from graft.backbones import create_model
from graft.checkpoint import load_checkpoint
from graft.config import ConfigError, params_from_dict
from graft.images import Preprocessing
from graft.inference import run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest, write_manifest
from graft.probe import fit_probe, select_c
from tests.conftest import copy_stage_outputs, make_split_project

BACKBONE = "efficientnet_lite0"
SIZE = 32  # pixels: the 1×1 final map still separates colours, and a step takes milliseconds
CLASSES = ["circle", "square", "stripes"]  # sorted
FAST = {"epochs": 2, "batch_size": 4, "augment": False}  # a fine-tuning run of a few seconds


def tiny_params(**finetune_section: object):
    return params_from_dict({"features": {"backbone": BACKBONE, "image_size": SIZE,
                                          "batch_size": 32},
                             "finetune": finetune_section})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches of 4 images at 32 px gain nothing from intra-op threads, and on CPUs shared with
    other test processes OpenMP's spin-waits make a step 10× slower: one thread for this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared (images + manifest) and data/features, built once for the module."""
    layout = make_split_project(tmp_path_factory.mktemp("finetune-base"), {"train": 4, "val": 3})
    features.run(tiny_params(), layout)
    return layout.root


@pytest.fixture()
def layout(base: Path, tmp_path: Path) -> Layout:
    """A fresh project root per test: its own copy of data/, no models or metrics yet."""
    return copy_stage_outputs(base, tmp_path)


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    return create_model(BACKBONE, len(CLASSES)).state_dict()


def drop_val(layout: Layout) -> None:
    """Remove the validation rows, so training keeps its last weights: with them, early stopping
    would restore the start whenever the probe head already scores 100% on validation."""
    df = read_manifest(layout.manifest)
    write_manifest(layout.manifest, df.loc[df["split"] != "val"])


def body_distance(state: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """‖θ − θ₀‖ over the backbone's weights (BatchNorm buffers and the head left out)."""
    keys = [k for k, v in start.items()
            if v.is_floating_point() and not k.startswith("classifier.") and "running" not in k]
    return float(torch.sqrt(sum(((state[k] - start[k]) ** 2).sum() for k in keys)))


def test_linear_probe_learns_and_the_folded_network_matches_sklearn(layout: Layout) -> None:
    params = tiny_params(strategy="linear_probe", c_grid=[0.1, 1.0])
    metrics = finetune.run(params, layout)

    assert metrics["strategy"] == "linear_probe"
    assert (metrics["n_train"], metrics["n_val"], metrics["n_classes"]) == (12, 9, 3)
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.9  # chance: 1/3
    assert metrics["C"] in (0.1, 1.0) and metrics["C_selection"] == "val"
    assert json.loads(layout.metrics("finetune").read_text()) == metrics
    plot = pd.read_csv(layout.plots / "finetune.csv")
    assert list(plot.columns) == ["step", "C", "val_accuracy"] and len(plot) == 2

    model, meta = load_checkpoint(layout.model)
    assert meta["class_names"] == CLASSES and meta["info"]["strategy"] == "linear_probe"
    df = read_manifest(layout.manifest)
    rows = df.loc[df["split"].isin(["train", "val"])].reset_index(drop=True)
    feats = features.load_features(layout, params, rows)
    y = rows["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probe = fit_probe(feats, y, metrics["C"], "none", len(CLASSES))  # the stage's refit
    logits = run_model(model, absolute_paths(rows, layout.manifest), meta["preprocessing"],
                       batch_size=8, device=torch.device("cpu"))
    np.testing.assert_allclose(logits, probe.logits(feats), atol=1e-4, rtol=0)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_folded_linear_equals_decision_function_and_probabilities(n_classes: int) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), 10)
    x = rng.normal(size=(len(y), 6)) * [1, 5, 0.1, 2, 1, 3] + 7 + y[:, None]
    probe = fit_probe(x, y, 1.0, "balanced", n_classes)
    head = nn.Linear(6, n_classes).double()
    probe.fold_into(head)
    logits = head(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(logits, probe.logits(x), atol=1e-9)
    scaled = (x - probe.mean) / probe.scale
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(),
                               probe.clf.predict_proba(scaled), atol=1e-9)


def test_c_selection_prefers_the_smaller_c_on_ties_and_uses_cv_without_val() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 6)
    x = rng.normal(size=(18, 5)) + 10 * y[:, None]  # separable: every C scores 100%
    chosen = select_c(x[::2], y[::2], x[1::2], y[1::2], [10.0, 0.1, 1.0], "none", 3, seed=0)
    assert (chosen.C, chosen.method, chosen.accuracy) == (0.1, "val", 1.0)
    assert [c for c, _ in chosen.scores] == [0.1, 1.0, 10.0]
    no_val = select_c(x, y, x[:0], y[:0], [1.0, 0.1], "none", 3, seed=0)
    assert (no_val.C, no_val.method, no_val.accuracy) == (0.1, "cv", 1.0)


def test_without_val_rows_the_probe_is_tuned_by_cross_validation(layout: Layout) -> None:
    drop_val(layout)
    metrics = finetune.run(tiny_params(c_grid=[0.1, 1.0]), layout)
    assert metrics["C_selection"] == "cv" and metrics["n_val"] == 0
    assert metrics["val_accuracy"] > 0.6  # pooled CV accuracy; chance is 1/3


def test_finetune_learns_from_a_zero_head(layout: Layout) -> None:
    # finetune starts from a zero head (loss = ln 3): the drop below comes from training.
    params = tiny_params(strategy="finetune", lr=0.05, epochs=3, batch_size=4,
                         augment=True)
    metrics = finetune.run(params, layout)
    plot = pd.read_csv(layout.plots / "finetune.csv")
    assert list(plot.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy", "lr"]
    assert plot["epoch"].tolist() == [0, 1, 2, 3] and metrics["epochs_run"] == 3
    assert plot["val_loss"].iloc[0] == pytest.approx(np.log(3), abs=0.05)
    assert plot["val_loss"].min() < np.log(3) - 0.2
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.8
    assert metrics["val_accuracy"] == plot["val_accuracy"].iloc[metrics["best_epoch"]]
    assert plot["lr"].iloc[1] == pytest.approx(0.05) and plot["lr"].iloc[3] < 0.05  # cosine
    _, meta = load_checkpoint(layout.model)
    assert meta["info"]["strategy"] == "finetune"
    assert meta["info"]["best_epoch"] == metrics["best_epoch"]


def test_early_stopping_restores_the_best_epoch(
    layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    # Learning rates of 1 wreck the network: no epoch beats the probe-initialised start (lp_ft).
    params = tiny_params(strategy="lp_ft", c_grid=[1.0], epochs=6, patience=2, lr=1.0,
                         backbone_lr=1.0, batch_size=4)
    metrics = finetune.run(params, layout)
    plot = pd.read_csv(layout.plots / "finetune.csv")
    assert (plot["val_accuracy"].iloc[1:] < plot["val_accuracy"].iloc[0]).all()
    assert (metrics["best_epoch"], metrics["epochs_run"], len(plot)) == (0, 2, 3)
    state = load_checkpoint(layout.model)[0].state_dict()
    assert body_distance(state, pretrained) == 0.0  # the start, restored bit for bit


def test_training_is_deterministic_for_a_seed(layout: Layout) -> None:
    drop_val(layout)
    states = []
    for seed in (0, 0, 1):
        finetune.run(tiny_params(strategy="finetune", c_grid=[0.1], epochs=2, batch_size=4,
                                 augment=True, seed=seed), layout)
        states.append(load_checkpoint(layout.model)[0].state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_frozen_blocks_and_batchnorm_statistics_stay_pretrained(
    layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    drop_val(layout)
    params = tiny_params(strategy="finetune", freeze_blocks=2, backbone_lr=0.01, patience=9,
                         c_grid=[1e-3], **FAST)
    finetune.run(params, layout)
    state = load_checkpoint(layout.model)[0].state_dict()
    frozen = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")
    for key, value in pretrained.items():
        if key.startswith(frozen) or "running_" in key:
            assert torch.equal(state[key], value), key
    trained = [k for k in pretrained if k.startswith("blocks.2.") and k.endswith("weight")]
    assert any(not torch.equal(state[k], pretrained[k]) for k in trained)


def test_bn_train_updates_statistics_outside_the_frozen_blocks(
    layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    drop_val(layout)
    params = tiny_params(strategy="finetune", freeze_blocks=1, bn_train=True, **FAST)
    finetune.run(params, layout)
    state = load_checkpoint(layout.model)[0].state_dict()
    key = "blocks.0.0.bn1.running_mean"  # in the frozen block 0
    assert torch.equal(state[key], pretrained[key])
    assert not torch.equal(state["bn2.running_mean"], pretrained["bn2.running_mean"])


def test_l2sp_keeps_the_backbone_near_its_pretrained_weights(
    layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    drop_val(layout)
    distances = {}
    for lam in (0.0, 1e4):
        # 18 steps: with Adam the pull of a huge λ bounds the drift at about lr per weight,
        # while without it the drift grows with every step
        params = tiny_params(strategy="finetune", l2sp=lam, backbone_lr=1e-3, c_grid=[1e-3],
                             epochs=3, batch_size=2, augment=False)
        finetune.run(params, layout)
        distances[lam] = body_distance(load_checkpoint(layout.model)[0].state_dict(), pretrained)
    assert distances[0.0] > 1.0
    assert distances[1e4] < 0.1 * distances[0.0], distances


def test_param_groups_freezing_and_train_mode() -> None:
    model = create_model(BACKBONE, len(CLASSES))
    frozen = training.freeze(model, 2)
    p = tiny_params(l2sp=0.1, weight_decay=0.05, lr=0.01, backbone_lr=0.001).finetune
    head, body = training.param_groups(model, p)
    assert (head["lr"], head["weight_decay"], len(head["params"])) == (0.01, 0.05, 2)
    assert (body["lr"], body["weight_decay"]) == (0.001, 0.0)  # L2-SP replaces weight decay
    frozen_ids = {id(q) for m in frozen for q in m.parameters()}
    assert frozen_ids and not frozen_ids & {id(q) for q in body["params"]}
    assert len(head["params"]) + len(body["params"]) + len(frozen_ids) == len(list(
        model.parameters()))
    no_l2sp = training.param_groups(model, tiny_params(weight_decay=0.05).finetune)
    assert no_l2sp[1]["weight_decay"] == 0.05

    training.set_train_mode(model, bn_train=False, frozen=frozen)
    assert model.classifier.training and not model.bn2.training
    training.set_train_mode(model, bn_train=True, frozen=frozen)
    assert model.bn2.training and not model.blocks[1][0].bn1.training


def test_balanced_class_weights_match_scikit_learn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 1, 2, 2])
    p = tiny_params(class_weight="balanced").finetune
    ours = training._class_weights(torch.from_numpy(y), 3, p).numpy()
    np.testing.assert_allclose(ours, compute_class_weight("balanced", classes=np.arange(3), y=y),
                               rtol=1e-6)
    assert training._class_weights(torch.from_numpy(y), 3, tiny_params().finetune) is None


def test_a_crash_in_training_leaves_the_previous_outputs_untouched(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout.models.mkdir()
    layout.model.write_bytes(b"the previous model")
    layout.metrics("finetune").parent.mkdir(exist_ok=True)
    layout.metrics("finetune").write_text('{"previous": true}\n')

    def crash(*args: object) -> float:
        raise RuntimeError("simulated crash mid-training")

    monkeypatch.setattr(training, "train_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune.run(tiny_params(strategy="finetune", **FAST), layout)
    assert layout.model.read_bytes() == b"the previous model"
    assert layout.metrics("finetune").read_text() == '{"previous": true}\n'
    assert sorted(p.name for p in layout.models.iterdir()) == ["model.pt"]  # no temporary left


@pytest.mark.parametrize("section", [{"strategy": "fine_tune"}, {"lr": "fast"},
                                     {"class_weight": "auto"}, {"bn_train": "yes"}])
def test_config_rejects_unknown_strategies_and_wrong_types(section: dict) -> None:
    with pytest.raises(ConfigError, match="finetune"):
        tiny_params(**section)


@pytest.mark.parametrize("section", [{"epochs": 0}, {"c_grid": []}, {"c_grid": [1.0, -1.0]},
                                     {"freeze_blocks": 8}, {"lr": 0}, {"l2sp": -1.0},
                                     {"patience": 0}])
def test_out_of_range_values_are_rejected_before_any_work(section: dict, tmp_path: Path) -> None:
    key = next(iter(section))
    with pytest.raises(ConfigError, match=f"params.yaml: finetune.{key} "):
        finetune.run(tiny_params(**section), Layout(tmp_path))  # no manifest: never reached


def test_validation_labels_must_have_training_images(layout: Layout) -> None:
    df = read_manifest(layout.manifest)
    df.loc[df["split"] == "val", "label"] = "zebra"
    write_manifest(layout.manifest, df)
    with pytest.raises(finetune.FinetuneError, match=r"manifest.csv: validation label.*zebra"):
        finetune.run(tiny_params(), layout)


def test_normalise_matches_preprocessing_and_augment_keeps_shape() -> None:
    pre = Preprocessing(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # uneven channels
    hwc = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    nchw = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_array_equal(augment.normalise(nchw, pre).numpy(), pre.normalise(hwc))

    transform = augment.build_augment(16)
    torch.manual_seed(0)
    out = augment.augment_batch(nchw, transform)
    assert out.shape == nchw.shape and out.dtype == torch.uint8
    torch.manual_seed(0)
    assert torch.equal(out, augment.augment_batch(nchw, transform))  # seeded
    assert not torch.equal(out, nchw)
