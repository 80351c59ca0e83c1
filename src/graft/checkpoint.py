"""models/model.pt: weights plus everything needed to use them (classes, preprocessing, backbone).

A checkpoint is a plain dict saved with torch.save, written atomically, so the last good model
stays in place if training crashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import graft
from graft.backbones import create_model
from graft.files import atomic_output
from graft.heads import install_head
from graft.images import Preprocessing


def save_checkpoint(
    path: Path | str,
    model: nn.Module,
    backbone: str,
    class_names: list[str],
    preprocessing: Preprocessing,
    head: dict[str, Any] | None = None,
    **info: Any,
) -> None:
    """`model` must be `create_model(backbone, len(class_names))` (timm, head named classifier);
    `head` is the graft.heads spec when that classifier is not a plain Linear layer."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "graft_version": graft.__version__,
        "backbone": backbone,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "state_dict": state,
        "head": head,  # None: timm's own Linear classifier
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
    model = create_model(payload["backbone"], len(payload["class_names"]), pretrained=False)
    if payload.get("head"):
        install_head(model, payload["head"])
    model.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["preprocessing"] = Preprocessing.from_dict(payload["preprocessing"])
    return model.eval(), meta
