"""The `ensemble` strategy's network: several heads on several frozen backbones, one model.

Members are every pair of `finetune.ensemble_backbones` × `finetune.ensemble_strategies` (feature
strategies only: linear_probe, svm, prototype), each fitted by graft.strategies.ensemble exactly
as the strategy on its own is, on that backbone's cached embeddings. What ships is one module:
each backbone runs once per image, each member's head reads its backbone's pooled features,
and the output is log(mean over members of softmax(head logits)), so a softmax of it gives the
members' averaged probabilities (and argmax their averaged vote). Averaging probabilities rather
than logits keeps a confident member from drowning the others whatever its logit scale.

All members must share one preprocessing (the EfficientNet-Lite family does: mean = std = 0.5,
at `features.image_size`; a `timm:` member must have the same mean and std). The checkpoint's
`network` entry is `spec()`; `build()` rebuilds the empty module from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.models.backbones import create_model
from graft.models.heads import build_head, head_logits

MIN_PROBABILITY = 1e-12  # log(0) guard: a class every member rules out keeps a finite logit


class Ensemble(nn.Module):
    """Frozen backbones (`bodies`, timm models without classifier) and member heads."""

    def __init__(self, bodies: dict[str, nn.Module], heads: list[nn.Module],
                 member_bodies: list[str]) -> None:
        super().__init__()
        if len(heads) != len(member_bodies) or not heads:
            raise ValueError("an ensemble needs one backbone name per head, and a head")
        self.bodies = nn.ModuleDict(bodies)
        self.heads = nn.ModuleList(heads)
        self.member_bodies = list(member_bodies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = {name: body(x) for name, body in self.bodies.items()}
        return combine([head(features[name])
                        for head, name in zip(self.heads, self.member_bodies, strict=True)])

    def head_logits(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """What the network computes from cached pooled features {backbone: (N, D)}: float64."""
        return combine([torch.from_numpy(head_logits(head, features[name]))
                        for head, name in zip(self.heads, self.member_bodies, strict=True)]
                       ).numpy()


def combine(member_logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the mean of the members' softmax probabilities."""
    probs = torch.stack([torch.softmax(logits, dim=1) for logits in member_logits]).mean(0)
    return torch.log(probs.clamp_min(MIN_PROBABILITY))


def assemble(members: list[dict[str, Any]], heads: list[nn.Module],
             weights_dir: Path | None = None) -> Ensemble:
    """The ensemble of fitted `heads` on pretrained bodies; `members[i]` names head i's
    backbone (`timm:` ones read their weights from `weights_dir`, features.weights_dir)."""
    names = list(dict.fromkeys(m["backbone"] for m in members))  # first-seen order
    bodies = {name: create_model(name, 0, weights_dir=weights_dir) for name in names}
    return Ensemble(bodies, heads, [m["backbone"] for m in members]).eval()


def spec(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint's `network` entry: each member's backbone, strategy and head spec."""
    return {"kind": "ensemble", "members": [
        {"backbone": m["backbone"], "strategy": m["strategy"], "head": m["head"]}
        for m in members]}


def build(network: dict[str, Any], n_classes: int) -> Ensemble:
    """An empty Ensemble of the shapes `network` (from `spec`) describes."""
    members = network["members"]
    bodies = {}
    for m in members:
        if m["backbone"] not in bodies:
            bodies[m["backbone"]] = create_model(m["backbone"], 0, pretrained=False)
    heads = [build_head(m["head"], bodies[m["backbone"]].num_features, n_classes)
             for m in members]
    return Ensemble(bodies, heads, [m["backbone"] for m in members])
