"""The search shared by the `svm` and `prototype` strategies: a decision function fitted on
cached embeddings, its setting chosen on held-out rows, its temperature fitted there, then refitted
on train + val and shipped as a graft.models.heads layer.

A subclass says what its decision function is (`decision`: raw weights, or support vectors and
their coefficients) and which settings it has. Both work on the features after
`finetune.feature_norm` and end as a head on top of the backbone, so the saved network maps an
image to logits. Selection uses the validation rows (pooled stratified k-fold on the training rows
when there are none); the temperature s is fitted (NLL) on those held-out decisions; the chosen
setting is then refitted on train + val, as linear_probe does. With no val rows and a class of one
training image (1-shot) nothing can be held out: `default_setting` is used with temperature 1
(argmax, hence accuracy, does not depend on it; the probabilities are then uncalibrated),
selection "default". Every candidate is scored through the torch head itself (float64), so the
numbers are the shipped model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from sklearn.model_selection import StratifiedKFold
from torch import nn

from graft.core.config import FinetuneParams
from graft.embeddings.views import with_views
from graft.models.heads import (
    KernelHead,
    build_head,
    head_logits,
    head_spec,
    norm_parts,
    normalise_features,
)
from graft.strategies.base import Curve, FeatureData, FeatureStrategy, HeadFit, train_accuracy

CV_FOLDS = 5  # at most, when there are no validation rows
LOG_S_BOUNDS = (np.log(1e-2), np.log(1e3))  # temperature search range (multiplier of logits)
CURVE = ("step", "kernel", "C", "gamma_x", "val_accuracy")  # plots/finetune.csv


class FeatureFitError(ValueError):
    """Labelled rows the svm/prototype strategies cannot be fitted or tuned on."""


class DecisionHead(FeatureStrategy):
    """A feature strategy whose head is a decision function chosen among `settings(p)`."""

    def decision(self, z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
                 class_weight: str) -> dict[str, Any]:
        """A decision function in raw form: {'weight', 'bias'} or {'support', 'coef', 'bias',
        'gamma'} (k rows each), fitted on already-normalised features."""
        raise NotImplementedError

    def default_setting(self, settings: list[dict[str, Any]]) -> dict[str, Any]:
        """The setting used when none can be scored: the middle one."""
        return settings[len(settings) // 2]

    def score(self, p: FinetuneParams, data: FeatureData) -> float:
        return self._search(p, data, refit=False).val_accuracy

    def fit_head(self, p: FinetuneParams, data: FeatureData) -> HeadFit:
        fitted = self._search(p, data, refit=True)
        rows = [[i, s.get("kernel", ""), s.get("C", ""), s.get("gamma_x", ""), s["val_accuracy"]]
                for i, s in enumerate(fitted.report["candidates"])]
        fitted.train_accuracy = train_accuracy(fitted.head, data)
        fitted.curve = Curve(CURVE, rows)
        return fitted

    def _search(self, p: FinetuneParams, data: FeatureData, refit: bool) -> HeadFit:
        """Choose a setting on held-out rows, fit the temperature there, refit on all rows
        (without `refit`: only the held-out accuracy, for `score`). Views (graft.embeddings.views)
        are fitted on with their rows, never scored."""
        settings = self.settings(p)
        k, is_train = data.n_classes, data.is_train
        mean, l2 = norm_parts(p.feature_norm, data.feats[is_train])
        z = normalise_features(data.feats, mean, l2)
        zv = None if data.views is None else normalise_features(data.views, mean, l2)
        z_tr, y_tr = z[is_train], data.y[is_train]
        zv_tr = None if zv is None else zv[is_train]
        has_val = bool((~is_train).any())
        if not has_val and np.bincount(y_tr, minlength=k).min() == 1:
            setting = self.default_setting(settings)
            head, spec = make_head(self.decision(*with_views(z, data.y, zv), k, setting,
                                                 p.class_weight),
                                   p.feature_norm, mean, 1.0, z.shape[1], k)
            return _head_fit(head, spec, {**setting, "temperature": 1.0}, None, "default",
                             [{**setting, "val_accuracy": None}])
        scores, held = [], []
        for setting in settings:
            if has_val:
                decision = self.decision(*with_views(z_tr, y_tr, zv_tr), k, setting,
                                         p.class_weight)
                logits, y_held = _decide(decision, z[~is_train]), data.y[~is_train]
            else:
                logits, y_held = self._out_of_fold(z_tr, y_tr, k, setting, p, zv_tr)
            scores.append({**setting, "val_accuracy": float((logits.argmax(1) == y_held).mean())})
            held.append(logits)
        best = max(range(len(settings)), key=lambda i: (scores[i]["val_accuracy"], -i))
        selection = "val" if has_val else "cv"
        if not refit:
            return _head_fit(None, None, settings[best], scores[best]["val_accuracy"], selection,
                             scores)
        temperature = fit_temperature(held[best], y_held)
        decision = self.decision(*with_views(z, data.y, zv), k, settings[best], p.class_weight)
        head, spec = make_head(decision, p.feature_norm, mean, temperature, z.shape[1], k)
        return _head_fit(head, spec, {**settings[best], "temperature": temperature},
                         scores[best]["val_accuracy"], selection, scores)

    def _out_of_fold(self, z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
                     p: FinetuneParams, views: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        smallest = int(np.bincount(y, minlength=k).min())
        if smallest < 2:
            raise FeatureFitError("no validation rows and a class has fewer than 2 training "
                                  "images: cannot cross-validate; add validation images")
        folds = StratifiedKFold(n_splits=min(CV_FOLDS, smallest), shuffle=True,
                                random_state=p.seed)
        logits = np.zeros((len(y), k))
        for tr, te in folds.split(z, y):
            fold = with_views(z[tr], y[tr], None if views is None else views[tr])
            logits[te] = _decide(self.decision(*fold, k, setting, p.class_weight), z[te])
        return logits, y


def _head_fit(head: nn.Module | None, spec: dict[str, Any] | None, setting: dict[str, Any],
              val_accuracy: float | None, selection: str, scores: list[dict]) -> HeadFit:
    """The HeadFit of a search; train accuracy and curve are filled in by `fit_head`."""
    report = {"C": setting.get("C"), "C_selection": selection,
              "setting": setting, "candidates": scores}
    return HeadFit(head, spec, val_accuracy, float("nan"), Curve(CURVE, []), report)


def make_head(decision: dict[str, Any], feature_norm: str, mean: np.ndarray | None,
              temperature: float, dim: int, k: int) -> tuple[nn.Module, dict[str, Any]]:
    """The graft.models.heads module computing temperature × decision(normalise(x)), and its spec
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


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The multiplier s minimising the mean NLL of softmax(s·logits) on held-out rows."""
    def nll(log_s: float) -> float:
        z = np.exp(log_s) * logits
        return float((logsumexp(z, axis=1) - z[np.arange(len(y)), y]).mean())

    res = minimize_scalar(nll, bounds=LOG_S_BOUNDS, method="bounded")
    return float(np.exp(res.x))
