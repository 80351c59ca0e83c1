"""Classifier heads that are more than one Linear layer, as torch modules the checkpoint rebuilds.

The feature strategies (linear_probe with a feature normalisation, svm, prototype) fit on cached
embeddings, but what ships is still one network: the timm backbone with `model.classifier`
replaced by the head below, so evaluate/export/predict run it like any other model and the ONNX
file needs nothing beside it. A head is described by a small JSON-able spec saved in the
checkpoint (`head_spec`); `build_head(spec, ...)` makes an empty module of the right shapes and
`load_state_dict` fills it.

- `FeatureNorm`: optional centring (subtract the training-feature mean) then optional L2
  normalisation, i.e. `finetune.feature_norm` none | center | l2 | center_l2 (SimpleShot,
  Wang et al. 2019: CL2N helps nearest-mean and linear classifiers on few shots).
- `KernelHead`: an RBF-kernel machine written as layers, exact rather than approximated:
  logits_c = Σ_i A[c, i]·exp(−γ‖x − s_i‖²) + b_c over the training rows s_i (support vectors of
  one-vs-rest SVMs; rows that are no class's support vector have A[:, i] = 0).

The numpy side (`normalise_features`) computes what `FeatureNorm` computes, for fitting on the
cache.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from graft.core.config import FEATURE_NORMS

EPS = 1e-12  # guards the L2 division for an all-zero feature vector


def normalise_features(x: np.ndarray, mean: np.ndarray | None, l2: bool) -> np.ndarray:
    """float64 copy of `x` (N, D), or (N, V, D) views, centred on `mean` when given, then
    L2-normalised along the last axis when `l2`."""
    z = np.asarray(x, np.float64)
    if mean is not None:
        z = z - mean
    if l2:
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), EPS)
    return z


def norm_parts(mode: str, train_features: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """(mean or None, l2) for `finetune.feature_norm`; the mean is over the training rows."""
    if mode not in FEATURE_NORMS:
        raise ValueError(f"feature_norm {mode!r} is not one of {', '.join(FEATURE_NORMS)}")
    mean = np.asarray(train_features, np.float64).mean(axis=0) if "center" in mode else None
    return mean, mode in ("l2", "center_l2")


class FeatureNorm(nn.Module):
    """x − mean (when centring), then x/‖x‖ (when `l2`); the mean is a buffer saved with it."""

    def __init__(self, dim: int, center: bool, l2: bool) -> None:
        super().__init__()
        self.l2 = l2
        self.register_buffer("mean", torch.zeros(dim) if center else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self.mean
        if self.l2:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(EPS)
        return x


class KernelHead(nn.Module):
    """RBF-kernel machine: `out(exp(−γ·‖x − support_i‖²))`, out a Linear (k, n_support)."""

    def __init__(self, dim: int, n_support: int, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("support", torch.zeros(n_support, dim))
        self.register_buffer("gamma", torch.zeros(()))
        self.out = nn.Linear(n_support, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ‖x − s‖² = ‖x‖² − 2x·s + ‖s‖², clamped: rounding can make it slightly negative
        d2 = ((x * x).sum(1, keepdim=True) - 2 * x @ self.support.T
              + (self.support * self.support).sum(1)[None, :]).clamp_min(0)
        return self.out(torch.exp(-self.gamma * d2))


def head_spec(norm: str, kind: Literal["linear", "rbf"] = "linear",
              n_support: int = 0) -> dict[str, Any] | None:
    """The checkpoint's description of a head; None for the plain Linear timm already has."""
    if norm == "none" and kind == "linear":
        return None
    return {"norm": norm, "kind": kind, "n_support": int(n_support)}


def build_head(spec: dict[str, Any] | None, dim: int, n_classes: int) -> nn.Module:
    """An empty head of the shapes `spec` describes (weights come from a state dict)."""
    if spec is None:
        return nn.Linear(dim, n_classes)
    norm = spec["norm"]
    if norm not in FEATURE_NORMS or spec["kind"] not in ("linear", "rbf"):
        raise ValueError(f"unknown head spec {spec!r}")
    last = (KernelHead(dim, spec["n_support"], n_classes) if spec["kind"] == "rbf"
            else nn.Linear(dim, n_classes))
    return nn.Sequential(FeatureNorm(dim, "center" in norm, norm in ("l2", "center_l2")), last)


def install_head(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    """Replace the plain Linear `model.classifier` of a fresh timm model by an empty head for
    `spec`; returns the new head."""
    old = model.classifier
    if not isinstance(old, nn.Linear):
        raise TypeError(f"install_head needs a Linear classifier, found {type(old).__name__}")
    model.classifier = build_head(spec, old.in_features, old.out_features)
    return model.classifier


def last_linear(head: nn.Module) -> nn.Linear:
    """The Linear layer that holds a linear head's weights (inside a Sequential or not)."""
    return head if isinstance(head, nn.Linear) else head[-1]


@torch.no_grad()  # not inference_mode: its tensors would poison the head for a later export
def head_logits(head: nn.Module, features: np.ndarray) -> np.ndarray:
    """What the shipped head computes on cached features: (N, k) float64 logits (computed on a
    float64 copy; `head` itself is left as it was)."""
    double = copy.deepcopy(head).eval().double()
    return double(torch.as_tensor(np.asarray(features, np.float64))).numpy()
