"""models/model.pt: weights plus everything needed to use them (classes, preprocessing, backbone).

A checkpoint is a plain dict saved with torch.save, written atomically, so the last good model
stays in place if training crashes. Its `network` entry says how to rebuild the module the
weights belong to:
- absent (the transferred model): `create_model(backbone)` with the graft.models.heads head `head`;
- {"kind": "baseline", "name": …, "size": …}: a graft.models.scratch network trained from
  scratch (models/baseline.pt, written by the evaluate stage);
- {"kind": "ensemble", …}: a graft.models.ensemble.Ensemble of several backbones and heads.

`deployed_checkpoint` says which checkpoint the export stage publishes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core import VERSION
from graft.core.files import atomic_output, sha256_file
from graft.core.layout import Layout
from graft.data.images import Preprocessing
from graft.models import ensemble, scratch
from graft.models.backbones import create_model
from graft.models.heads import install_head


def save_checkpoint(
    path: Path | str,
    model: nn.Module,
    backbone: str,
    class_names: list[str],
    preprocessing: Preprocessing,
    head: dict[str, Any] | None = None,
    network: dict[str, Any] | None = None,
    **info: Any,
) -> None:
    """`model` is `create_model(backbone, len(class_names))` (timm, head named classifier) with
    `head` the graft.models.heads spec when that classifier is not a plain Linear layer, or the
    network `network` describes (see the module docstring)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "graft_version": VERSION,
        "backbone": backbone,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "state_dict": state,
        "head": head,  # None: timm's own Linear classifier
        "network": network,  # None: the timm backbone + head above
        "info": info,  # strategy, params, validation scores: shown, never needed to load
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on the CPU, metadata) where metadata has backbone, class_names,
    preprocessing (a Preprocessing) and info."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: model not found; run the finetune stage first")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model = build_network(payload)
    model.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["preprocessing"] = Preprocessing.from_dict(payload["preprocessing"])
    return model.eval(), meta


def build_network(payload: dict[str, Any]) -> nn.Module:
    """The empty module a checkpoint's weights belong to (see the module docstring)."""
    network, k = payload.get("network"), len(payload["class_names"])
    if network is None:
        model = create_model(payload["backbone"], k, pretrained=False)
        if payload.get("head"):
            install_head(model, payload["head"])
        return model
    if network["kind"] == "baseline":
        return scratch.build(network["name"], k, network["size"])
    if network["kind"] == "ensemble":
        return ensemble.build(network, k)
    raise ValueError(f"unknown network kind {network['kind']!r} in the checkpoint")


def deployed_checkpoint(layout: Layout) -> Path:
    """The checkpoint export publishes: models/model.pt, or models/baseline.pt when the evaluate
    stage found negative transfer under `evaluate.on_negative_transfer: use_baseline` (its
    metrics record that as `"deployed": "baseline"`)."""
    path = layout.metrics("evaluate")
    verdict = json.loads(path.read_text()) if path.exists() else {}
    if verdict.get("deployed") != "baseline":
        return layout.model
    if verdict.get("model_sha256") != sha256_file(layout.model):
        raise ValueError(f"{path}: says to deploy the baseline, but it judged another "
                         f"{layout.model} than the one there now; run the evaluate stage again")
    return layout.baseline_model
