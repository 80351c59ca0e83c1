"""The `linear_probe` strategy (graft.strategies.linear_probe): C chosen on val (CV without val,
the documented default at one shot), the probe folded into one Linear layer that computes
exactly sklearn's decision function, through the finetune stage on the tiny project."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, read_manifest
from graft.embeddings.store import load_features
from graft.models.checkpoint import load_checkpoint
from graft.models.inference import run_model
from graft.stages import finetune
from graft.strategies.linear_probe import fit_probe, select_c
from tests.fixtures import CLASSES, drop_val, finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_probe_learns_and_the_folded_network_matches_sklearn(tiny_layout: Layout) -> None:
    layout = tiny_layout
    params = finetune_params(strategy="linear_probe", c_grid=[0.1, 1.0])
    metrics = finetune.run(params, layout)

    assert metrics["strategy"] == "linear_probe"
    assert (metrics["n_train"], metrics["n_val"], metrics["n_classes"]) == (12, 9, 3)
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.9  # chance: 1/3
    assert metrics["C"] in (0.1, 1.0) and metrics["C_selection"] == "val"
    assert json.loads(layout.metrics("finetune").read_text()) == metrics
    plot = pd.read_csv(layout.plot("finetune.csv"))
    assert list(plot.columns) == ["step", "C", "val_accuracy"] and len(plot) == 2

    model, meta = load_checkpoint(layout.model)
    assert meta["class_names"] == CLASSES and meta["info"]["strategy"] == "linear_probe"
    df = read_manifest(layout.manifest)
    rows = df.loc[df["split"].isin(["train", "val"])].reset_index(drop=True)
    feats = load_features(layout, params, rows)
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


def test_one_shot_without_val_uses_the_default_c() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 8)) + 5 * np.eye(3, 8), np.arange(3)
    sel = select_c(x, y, x[:0], y[:0], [0.01, 0.1, 1.0, 10.0], "none", 3, 0)
    assert (sel.C, sel.method) == (1.0, "default")


def test_without_val_rows_the_probe_is_tuned_by_cross_validation(tiny_layout: Layout) -> None:
    drop_val(tiny_layout)
    metrics = finetune.run(finetune_params(c_grid=[0.1, 1.0]), tiny_layout)
    assert metrics["C_selection"] == "cv" and metrics["n_val"] == 0
    assert metrics["val_accuracy"] > 0.6  # pooled CV accuracy; chance is 1/3
