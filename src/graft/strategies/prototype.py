"""The `prototype` strategy: nearest class mean by cosine (Snell et al. 2017; SimpleShot, Wang et
al. 2019), shipped as a Linear head.

Weights w_c = μ_c/‖μ_c‖ (μ_c the mean normalised feature of class c), bias 0, so
logits = s·⟨z, μ̂_c⟩; with an L2 `feature_norm` that is s·cos(z, μ_c). The argmax is the nearest
prototype whatever the norm; the temperature s (graft.strategies.head_search) only makes the
probabilities sane.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from graft.core.config import FinetuneParams
from graft.strategies.head_search import DecisionHead


class Prototype(DecisionHead):
    """`finetune.strategy: prototype`: one setting, nothing to choose but the temperature."""

    def narrow(self, p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
        return dataclasses.replace(p, strategy="prototype")

    def decision(self, z: np.ndarray, y: np.ndarray, k: int, setting: dict[str, Any],
                 class_weight: str) -> dict[str, Any]:
        mu = np.stack([z[y == c].mean(axis=0) for c in range(k)])
        weight = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
        return {"weight": weight, "bias": np.zeros(k)}
