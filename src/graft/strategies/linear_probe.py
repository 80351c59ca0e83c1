"""The `linear_probe` strategy: multinomial logistic regression on frozen, standardised embeddings.

The regularisation strength C is chosen from `c_grid` by validation accuracy (k-fold CV on the
training rows when there is no validation split), then the probe is refitted on train + val rows
with that C. The refit uses every label we have, which matters most when there are only a few per
class; the reported val_accuracy is therefore the one measured before the refit (the refitted
model has seen the validation rows). The fitted probe folds its standardisation into a torch
Linear layer (after the `feature_norm` layer, graft.models.heads), so the saved network maps an
image straight to logits. The probe is also the starting head of the `lp_ft` strategy.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from graft.core.config import FinetuneParams
from graft.embeddings.views import with_views
from graft.models.heads import build_head, head_spec, last_linear, norm_parts, normalise_features
from graft.strategies.base import Curve, FeatureData, FeatureStrategy, HeadFit

CURVE = ("step", "C", "val_accuracy")  # plots/finetune.csv: one row per C tried

log = logging.getLogger(__name__)

MAX_ITER = 2000  # lbfgs iterations; few-shot problems converge in well under 500
CV_FOLDS = 5  # at most; fewer when the smallest class has fewer training images


class ProbeError(ValueError):
    """Data the probe cannot be fitted or tuned on."""


@dataclass(frozen=True)
class Selection:
    """The chosen C and how it was chosen; `scores` holds (C, accuracy) for every C tried."""

    C: float
    method: Literal["val", "cv", "single", "default"]  # default: nothing could be held out
    accuracy: float | None  # the chosen C's val (or mean CV) accuracy; None when nothing scored
    scores: list[tuple[float, float]]


@dataclass(frozen=True)
class Probe:
    """A fitted probe: standardisation (mean, scale) and the classifier on standardised inputs."""

    C: float
    mean: np.ndarray  # (D,) float64
    scale: np.ndarray  # (D,) float64, 1 where a feature is constant
    clf: LogisticRegression
    n_classes: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, n_classes) float64: what the folded Linear layer computes (see `fold_into`)."""
        z = self.clf.decision_function((np.asarray(features, np.float64) - self.mean) / self.scale)
        return _as_logits(z, self.n_classes)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(axis=1)

    def fold_into(self, linear: nn.Linear) -> None:
        """Set linear(x) = W (x − μ)/σ + b, i.e. weight W/σ and bias b − (W/σ)·μ."""
        w, b = self.clf.coef_, self.clf.intercept_
        if self.n_classes == 2:
            # sklearn keeps one row for two classes (logit of class 1); ±½ of it gives the same
            # softmax and the same difference of logits.
            w, b = np.vstack([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        weight = w / self.scale
        bias = b - weight @ self.mean
        if linear.weight.shape != weight.shape:
            raise ValueError(f"head is {tuple(linear.weight.shape)}, probe is {weight.shape}")
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
            linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def fit_probe(
    features: np.ndarray, labels: np.ndarray, C: float, class_weight: str, n_classes: int,
    views: np.ndarray | None = None,
) -> Probe:
    """Standardise, then fit lbfgs logistic regression (multinomial for more than two classes),
    on the rows and their augmented views (graft.embeddings.views; (n, N, D) aligned with the
    rows)."""
    features, labels = with_views(features, labels, views)
    x = np.asarray(features, np.float64)
    scaler = StandardScaler().fit(x)  # constant features get scale 1
    clf = LogisticRegression(
        C=C,
        solver="lbfgs",
        max_iter=MAX_ITER,
        class_weight=None if class_weight == "none" else class_weight,
    )
    # One BLAS thread: these products are small, and a threaded BLAS on a busy 2-core machine
    # spins (measured: a 30-image 5-fold C search took 35 s threaded; graft.evaluation.baselines).
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(x), labels)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("linear probe with C=%g did not converge in %d lbfgs iterations", C, MAX_ITER)
    if len(clf.classes_) != n_classes or (clf.classes_ != np.arange(n_classes)).any():
        raise ProbeError(f"training labels cover classes {clf.classes_.tolist()}, "
                         f"expected all of 0..{n_classes - 1}")
    return Probe(float(C), scaler.mean_, scaler.scale_, clf, n_classes)


def select_c(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    c_grid: list[float],
    class_weight: str,
    n_classes: int,
    seed: int,
    views_train: np.ndarray | None = None,
) -> Selection:
    """Best C by accuracy on the validation rows; ties go to the smaller C (stronger prior).

    Without validation rows, stratified k-fold CV on the training rows scores each C instead.
    `views_train` (graft.embeddings.views) are the training rows' views: fitted on, never scored.
    With neither (no val rows, every class present but one with a single training image, e.g. a
    1-shot episode) nothing can be scored: the grid's middle value is used (the upper middle for
    an even grid, 1.0 for the default grid: sklearn's default), method "default".
    """
    grid = sorted(set(float(c) for c in c_grid))
    if len(grid) == 1 and len(y_val) == 0:
        return Selection(grid[0], "single", None, [])
    if len(y_val) == 0 and np.bincount(y_train, minlength=n_classes).min() == 1:
        return Selection(grid[len(grid) // 2], "default", None, [])
    if len(y_val):
        scores = []
        for c in grid:
            probe = fit_probe(x_train, y_train, c, class_weight, n_classes, views_train)
            scores.append((c, float((probe.predict(x_val) == y_val).mean())))
        method: Literal["val", "cv"] = "val"
    else:
        scores = [(c, _cv_accuracy(x_train, y_train, c, class_weight, n_classes, seed,
                                   views_train)) for c in grid]
        method = "cv"
    best_c, best_acc = scores[0]
    for c, acc in scores[1:]:
        if acc > best_acc:  # strictly better: ties keep the smaller C
            best_c, best_acc = c, acc
    return Selection(best_c, method, best_acc, scores)


def _cv_accuracy(
    x: np.ndarray, y: np.ndarray, C: float, class_weight: str, n_classes: int, seed: int,
    views: np.ndarray | None = None,
) -> float:
    smallest = int(np.bincount(y, minlength=n_classes).min())
    if smallest < 2:
        raise ProbeError(
            "cannot choose C: there are no validation rows and a class has fewer than 2 "
            "training images for cross-validation (add validation images or give c_grid one value)"
        )
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, smallest), shuffle=True, random_state=seed)
    correct = 0
    for train_idx, test_idx in folds.split(x, y):
        probe = fit_probe(x[train_idx], y[train_idx], C, class_weight, n_classes,
                          None if views is None else views[train_idx])
        correct += int((probe.predict(x[test_idx]) == y[test_idx]).sum())
    return correct / len(y)  # pooled over folds: every training image is scored once


def _as_logits(z: np.ndarray, n_classes: int) -> np.ndarray:
    if n_classes == 2:
        z = z.reshape(-1, 1)
        return np.hstack([-z / 2, z / 2])
    return z


class LinearProbe(FeatureStrategy):
    """`finetune.strategy: linear_probe`."""

    def settings(self, p: FinetuneParams) -> list[dict[str, Any]]:
        return [{"C": float(c)} for c in sorted(p.c_grid)]

    def narrow(self, p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
        return dataclasses.replace(p, strategy="linear_probe", c_grid=[setting["C"]])

    def score(self, p: FinetuneParams, data: FeatureData) -> float:
        z, zv, _ = _normalised(p, data)
        t = data.is_train
        probe = fit_probe(z[t], data.y[t], p.c_grid[0], p.class_weight, data.n_classes,
                          None if zv is None else zv[t])
        return float((probe.predict(z[~t]) == data.y[~t]).mean())

    def fit_head(self, p: FinetuneParams, data: FeatureData) -> HeadFit:
        z, zv, mean = _normalised(p, data)
        t, y = data.is_train, data.y
        selection = select_c(z[t], y[t], z[~t], y[~t], p.c_grid, p.class_weight, data.n_classes,
                             p.seed, None if zv is None else zv[t])
        probe = fit_probe(z, y, selection.C, p.class_weight, data.n_classes, zv)
        spec = head_spec(p.feature_norm)
        head = build_head(spec, z.shape[1], data.n_classes)
        if mean is not None:
            with torch.no_grad():
                head[0].mean.copy_(torch.as_tensor(mean))
        probe.fold_into(last_linear(head))
        train_accuracy = float((probe.predict(z[t]) == y[t]).mean())
        curve = Curve(CURVE, [[i, c, acc] for i, (c, acc) in enumerate(selection.scores)])
        return HeadFit(head, spec, selection.accuracy, train_accuracy, curve,
                       {"C": selection.C, "C_selection": selection.method})


def _normalised(p: FinetuneParams, data: FeatureData
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(features, views, centring mean) after `feature_norm`, its statistics from the training
    rows: what the probe is fitted on, and what the shipped head repeats."""
    mean, l2 = norm_parts(p.feature_norm, data.feats[data.is_train])
    views = None if data.views is None else normalise_features(data.views, mean, l2)
    return normalise_features(data.feats, mean, l2), views, mean
