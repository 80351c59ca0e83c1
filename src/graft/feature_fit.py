"""The `svm` and `prototype` strategies: heads fitted on cached embeddings, shipped as layers.

Both work on the features after `finetune.feature_norm` (graft.heads.FeatureNorm) and end as a
graft.heads module on top of the backbone, so the saved network maps an image to logits:

- `prototype`: nearest class mean by cosine (Snell et al. 2017; SimpleShot, Wang et al. 2019).
  Weights w_c = μ_c/‖μ_c‖ (μ_c the mean normalised feature of class c), bias 0, so
  logits = s·⟨z, μ̂_c⟩; with an L2 `feature_norm` that is s·cos(z, μ_c). The argmax is the
  nearest prototype whatever the norm; the temperature s only makes the probabilities sane.
- `svm`: one-vs-rest SVMs (sklearn SVC), kernel in `svm_kernels` (linear, rbf), C in
  `svm_c_grid`, γ in `svm_gamma_grid` × sklearn's 'scale' (1/(D·var z)), chosen on val. A linear
  SVM folds into a Linear layer; an RBF SVM becomes graft.heads.KernelHead, which computes the
  same kernel expansion exactly (no approximation), so it exports to ONNX like any other head.

Selection uses the validation rows (pooled stratified k-fold on the training rows when there are
none); the temperature s is fitted (NLL) on those held-out decisions; the chosen setting is then
refitted on train + val, as linear_probe does. With no val rows and a class of one training image
(1-shot) nothing can be held out: `default_setting` is used with temperature 1 (argmax, hence
accuracy, does not depend on it; the probabilities are then uncalibrated), selection "default".
Every candidate is scored through the torch head itself (float64), so the numbers are the
shipped model's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from sklearn.model_selection import StratifiedKFold
from torch import nn

from graft.heads import KernelHead, build_head, head_logits, head_spec, norm_parts, normalise
from graft.views import with_views

CV_FOLDS = 5  # at most, when there are no validation rows
LOG_S_BOUNDS = (np.log(1e-2), np.log(1e3))  # temperature search range (multiplier of logits)


class FeatureFitError(ValueError):
    """Labelled rows the svm/prototype strategies cannot be fitted or tuned on."""


@dataclass
class Fitted:
    head: nn.Module  # the classifier module to install as model.classifier
    spec: dict[str, Any] | None  # its graft.heads spec, saved in the checkpoint
    setting: dict[str, Any]  # the chosen kernel/C/gamma (svm) and the temperature
    val_accuracy: float | None  # held-out accuracy of the chosen setting, before the refit
    selection: str  # val | cv | default (nothing held out: see default_setting)
    scores: list[dict[str, Any]]  # every candidate: its setting and held-out accuracy


def candidates(strategy: str, kernels: list[str], c_grid: list[float],
               gamma_grid: list[float]) -> list[dict[str, Any]]:
    """Settings tried, simplest first (ties keep the earlier one)."""
    if strategy == "prototype":
        return [{}]
    out: list[dict[str, Any]] = []
    if "linear" in kernels:
        out += [{"kernel": "linear", "C": float(c)} for c in sorted(c_grid)]
    if "rbf" in kernels:
        out += [{"kernel": "rbf", "C": float(c), "gamma_x": float(g)}
                for c, g in itertools.product(sorted(c_grid), sorted(gamma_grid))]
    return out


def default_setting(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The setting used when none can be scored: among the first kernel's candidates (linear
    when listed), the middle one (upper middle: C = 1.0 for the default grid)."""
    first = [s for s in settings if s.get("kernel") == settings[0].get("kernel")]
    return first[len(first) // 2]


def fit_strategy(strategy: str, feats: np.ndarray, y: np.ndarray, is_train: np.ndarray,
                 n_classes: int, feature_norm: str, settings: list[dict[str, Any]],
                 class_weight: str, seed: int, views: np.ndarray | None = None) -> Fitted:
    """Choose a setting on held-out rows, fit the temperature there, refit on all rows.
    `views` (graft.views, (n, N, D) aligned with `feats`) are fitted on with their rows."""
    mean, l2 = norm_parts(feature_norm, feats[is_train])
    z = normalise(feats, mean, l2)
    zv = None if views is None else normalise(views, mean, l2)
    z_tr, y_tr = z[is_train], y[is_train]
    zv_tr = None if zv is None else zv[is_train]
    has_val = bool((~is_train).any())
    if not has_val and np.bincount(y_tr, minlength=n_classes).min() == 1:
        setting = default_setting(settings)
        head, spec = make_head(_fit(strategy, *with_views(z, y, zv), n_classes, setting,
                                    class_weight),
                               feature_norm, mean, 1.0, z.shape[1], n_classes)
        return Fitted(head, spec, {**setting, "temperature": 1.0}, None, "default",
                      [{**setting, "val_accuracy": None}])
    scores, held = [], []
    for setting in settings:
        if has_val:
            logits = _decide(_fit(strategy, *with_views(z_tr, y_tr, zv_tr), n_classes, setting,
                                  class_weight), z[~is_train])
            y_held = y[~is_train]
        else:
            logits, y_held = _out_of_fold(strategy, z_tr, y_tr, n_classes, setting,
                                          class_weight, seed, zv_tr)
        acc = float((logits.argmax(1) == y_held).mean())
        scores.append({**setting, "val_accuracy": acc})
        held.append(logits)
    best = max(range(len(settings)), key=lambda i: (scores[i]["val_accuracy"], -i))
    temperature = fit_temperature(held[best], y_held)
    decision = _fit(strategy, *with_views(z, y, zv), n_classes, settings[best], class_weight)
    head, spec = make_head(decision, feature_norm, mean, temperature, z.shape[1], n_classes)
    return Fitted(head, spec, {**settings[best], "temperature": temperature},
                  scores[best]["val_accuracy"], "val" if has_val else "cv", scores)


def _fit(strategy: str, z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
         class_weight: str) -> dict[str, Any]:
    """A decision function in raw form: {'weight', 'bias'} or {'support', 'coef', 'bias',
    'gamma'} (k rows each), on already-normalised features."""
    if strategy == "prototype":
        mu = np.stack([z[y == c].mean(axis=0) for c in range(k)])
        weight = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
        return {"weight": weight, "bias": np.zeros(k)}
    return _fit_svm(z, y, k, setting, class_weight)


def _fit_svm(z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
             class_weight: str) -> dict[str, Any]:
    """k binary SVCs, class c against the rest; decision_c(x) = Σ_i A[c,i]·K(s_i, x) + b_c."""
    from sklearn.svm import SVC

    var = z.var()
    gamma = setting.get("gamma_x", 1.0) / (z.shape[1] * var if var > 0 else 1.0)
    coef, bias = np.zeros((k, len(z))), np.zeros(k)
    for c in range(k):
        target = (y == c).astype(int)
        if target.min() == target.max():
            raise FeatureFitError(f"svm: class {c} has no training rows (or all rows are it)")
        svc = SVC(kernel=setting["kernel"], C=setting["C"], gamma=gamma,
                  class_weight=None if class_weight == "none" else class_weight)
        svc.fit(z, target)  # classes_ == [0, 1]: a positive decision means class c
        coef[c, svc.support_] = svc.dual_coef_[0]
        bias[c] = svc.intercept_[0]
    if setting["kernel"] == "linear":
        return {"weight": coef @ z, "bias": bias}  # w_c = Σ_i A[c,i]·s_i
    used = np.flatnonzero(np.abs(coef).sum(axis=0) > 0)  # support vectors of any class
    return {"support": z[used], "coef": coef[:, used], "bias": bias, "gamma": gamma}


def make_head(decision: dict[str, Any], feature_norm: str, mean: np.ndarray | None,
              temperature: float, dim: int, k: int) -> tuple[nn.Module, dict[str, Any]]:
    """The graft.heads module computing temperature × decision(normalise(x)), and its spec
    (`mean` is the centring vector when `feature_norm` centres)."""
    kind = "rbf" if "support" in decision else "linear"
    n_support = len(decision["support"]) if kind == "rbf" else 0
    spec = head_spec(feature_norm, kind, n_support) or {"norm": "none", "kind": "linear",
                                                        "n_support": 0}
    head = build_head(spec, dim, k)
    norm, last = head[0], head[1]
    with torch.no_grad():
        if mean is not None:
            norm.mean.copy_(torch.as_tensor(mean))
        out = last.out if isinstance(last, KernelHead) else last
        out.weight.copy_(torch.as_tensor(temperature * decision.get("coef", decision.get(
            "weight"))))
        out.bias.copy_(torch.as_tensor(temperature * decision["bias"]))
        if isinstance(last, KernelHead):
            last.support.copy_(torch.as_tensor(decision["support"]))
            last.gamma.fill_(float(decision["gamma"]))
    return head, spec


def _decide(decision: dict[str, Any], z: np.ndarray) -> np.ndarray:
    """Held-out logits of a raw decision on normalised features, through the torch head."""
    k = len(decision["bias"])
    head, _ = make_head(decision, "none", None, 1.0, z.shape[1], k)
    return head_logits(head, z)


def _out_of_fold(strategy: str, z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
                 class_weight: str, seed: int, views: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    smallest = int(np.bincount(y, minlength=k).min())
    if smallest < 2:
        raise FeatureFitError("no validation rows and a class has fewer than 2 training images: "
                              "cannot cross-validate; add validation images")
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, smallest), shuffle=True, random_state=seed)
    logits = np.zeros((len(y), k))
    for tr, te in folds.split(z, y):
        fold = with_views(z[tr], y[tr], None if views is None else views[tr])
        logits[te] = _decide(_fit(strategy, *fold, k, setting, class_weight), z[te])
    return logits, y


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The multiplier s minimising the mean NLL of softmax(s·logits) on held-out rows."""
    def nll(log_s: float) -> float:
        z = np.exp(log_s) * logits
        return float((logsumexp(z, axis=1) - z[np.arange(len(y)), y]).mean())

    res = minimize_scalar(nll, bounds=LOG_S_BOUNDS, method="bounded")
    return float(np.exp(res.x))
