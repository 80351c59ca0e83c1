"""The `svm` strategy: one-vs-rest SVMs on cached embeddings, shipped as a head.

Kernel in `svm_kernels` (linear, rbf), C in `svm_c_grid`, γ in `svm_gamma_grid` × sklearn's
'scale' (1/(D·var z)), chosen on val (graft.strategies.head_search). A linear SVM folds into a
Linear layer; an RBF SVM becomes graft.models.heads.KernelHead, which computes the same kernel
expansion exactly (no approximation), so it exports to ONNX like any other head.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
from sklearn.svm import SVC

from graft.core.config import FinetuneParams
from graft.strategies.head_search import DecisionHead, FeatureFitError


class SVM(DecisionHead):
    """`finetune.strategy: svm`."""

    def settings(self, p: FinetuneParams) -> list[dict[str, Any]]:
        """Linear kernels (every C), then RBF (every C × γ), simplest first."""
        out: list[dict[str, Any]] = []
        if "linear" in p.svm_kernels:
            out += [{"kernel": "linear", "C": float(c)} for c in sorted(p.svm_c_grid)]
        if "rbf" in p.svm_kernels:
            out += [{"kernel": "rbf", "C": float(c), "gamma_x": float(g)}
                    for c, g in itertools.product(sorted(p.svm_c_grid), sorted(p.svm_gamma_grid))]
        return out

    def narrow(self, p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
        return dataclasses.replace(p, strategy="svm", svm_kernels=[setting["kernel"]],
                                   svm_c_grid=[setting["C"]],
                                   svm_gamma_grid=[setting.get("gamma_x", 1.0)])

    def default_setting(self, settings: list[dict[str, Any]]) -> dict[str, Any]:
        """Among the first kernel's candidates (linear when listed), the middle one (upper
        middle: C = 1.0 for the default grid)."""
        first = [s for s in settings if s.get("kernel") == settings[0].get("kernel")]
        return first[len(first) // 2]

    def decision(self, z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
                 class_weight: str) -> dict[str, Any]:
        """k binary SVCs, class c against the rest; decision_c(x) = Σ_i A[c,i]·K(s_i, x) + b_c."""
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
