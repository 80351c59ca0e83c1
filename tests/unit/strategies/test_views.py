"""The feature strategies fit on augmented views (graft.embeddings.views) but never score a row
after fitting on its own views: cross-validation keeps views with their rows."""

from __future__ import annotations

import numpy as np

from graft.strategies.auto import score_candidates
from graft.strategies.base import FeatureData
from graft.strategies.linear_probe import select_c
from graft.strategies.svm import SVM
from tests.fixtures import views_params


def noise_with_copies(n_per_class: int = 8, dim: int = 200, seed: int = 0):
    """Labels carry no signal; each row's views are exact copies of it. Scoring a row after
    fitting on its own copies would look near-perfect, so held-out accuracy well above chance
    means views leaked across the split."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    x = rng.normal(size=(len(y), dim))
    return x, y, np.stack([x, x], axis=1)


def test_cross_validation_keeps_views_with_their_rows() -> None:
    x, y, views = noise_with_copies()
    empty = x[:0]
    selection = select_c(x, y, empty, y[:0], [100.0], "none", 3, 0, views)
    assert selection.method == "single" or selection.accuracy < 0.7
    selection = select_c(x, y, empty, y[:0], [10.0, 100.0], "none", 3, 0, views)
    assert selection.method == "cv" and selection.accuracy < 0.7  # chance 1/3; leaked ≈ 1
    data = FeatureData(x, y, np.ones(len(y), bool), 3, views)
    svm = views_params(strategy="svm", svm_kernels=["rbf"], svm_c_grid=[100.0],
                       svm_gamma_grid=[1.0]).finetune
    fitted = SVM().fit_head(svm, data)
    assert fitted.report["C_selection"] == "cv" and fitted.val_accuracy < 0.7
    scored = score_candidates([{"strategy": "linear_probe", "feature_norm": "none", "C": 100.0}],
                              data, views_params().finetune, "repeated_cv", float("inf"))
    assert scored[0]["score"] < 0.7
