"""models/model.pt: weights plus everything needed to use them (classes, preprocessing, backbone).

A checkpoint is data, never code: a safetensors file (tensors only; its parser builds nothing but
arrays) whose header carries the rest as JSON text under `graft` (classes, preprocessing, head
spec, network spec, info). It is written atomically, so the last good model stays in place if
training crashes. No pickle is ever loaded: a torch.save file (what Graft wrote before, or one a
user hands over) is refused by name, whatever it contains. The name model.pt stays: dvc.yaml
and users' scripts name it. Its `network` entry says how to rebuild the module the weights
belong to:
- absent (the transferred model): `create_model(backbone)` with the graft.models.heads head `head`;
- {"kind": "baseline", "name": …, "size": …}: a graft.models.scratch network trained from
  scratch (models/baseline.pt, written by the evaluate stage);
- {"kind": "ensemble", …}: a graft.models.ensemble.Ensemble of several backbones and heads.

`load_frozen_head` reads a feature strategy's head without building its backbone;
`deployed_checkpoint` says which checkpoint the export stage publishes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from graft.core import VERSION
from graft.core.files import json_text, sha256_file, write_bytes
from graft.core.layout import Layout
from graft.data.images import Preprocessing
from graft.models import ensemble, scratch
from graft.models.backbones import create_model
from graft.models.heads import build_head, install_head

FORMAT = "graft-checkpoint/2"  # the safetensors header's `format`
META_KEY = "graft"  # the header entry holding the JSON metadata


class CheckpointError(ValueError):
    """A model file Graft will not load (not its format, truncated, a pickle); names the file."""


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
    # own contiguous copies: safetensors refuses tensors that share memory
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "graft_version": VERSION,
        "backbone": backbone,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "head": head,  # None: timm's own Linear classifier
        "network": network,  # None: the timm backbone + head above
        "info": info,  # strategy, params, validation scores: shown, never needed to load
    }
    header = {"format": FORMAT, META_KEY: json_text(meta, indent=None)}
    write_bytes(path, safetensors_bytes(state, metadata=header))  # a full disk names `path`


def load_checkpoint(path: Path | str, head_only: bool = False
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on the CPU, metadata) where metadata has backbone, class_names,
    preprocessing (a Preprocessing) and info. CheckpointError naming the file when it is not a
    complete Graft checkpoint. With `head_only`, a checkpoint `load_frozen_head` can read comes
    back as its FrozenHead (the file is read once either way)."""
    path = Path(path)
    meta, state = read_checkpoint(path)
    frozen = _frozen_head(path, meta, state) if head_only else None
    if frozen is not None:
        return frozen
    try:
        model = build_network(meta)
        model.load_state_dict(state)
        meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit the network its header "
                              f"describes ({type(exc).__name__}: {str(exc)[:300]})") from None
    return model.eval(), meta


class FrozenHead(nn.Module):
    """A frozen-backbone checkpoint's head alone, as `.classifier`: what scoring from the
    embedding store and glueing the head onto the store's graph use. It cannot see images."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.classifier = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("a FrozenHead has no backbone: load the checkpoint whole "
                        "(load_checkpoint) to run it on images")


def load_frozen_head(path: Path | str) -> tuple[FrozenHead, dict[str, Any]] | None:
    """(its head as a FrozenHead, metadata) when the checkpoint is a frozen pretrained backbone
    with a head named `classifier` (a feature strategy's), without building the backbone: no
    timm import, ~3 s of every stage that reads model.pt; else None (use `load_checkpoint`)."""
    path = Path(path)
    return _frozen_head(path, *read_checkpoint(path))


def _frozen_head(path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]
                 ) -> tuple[FrozenHead, dict[str, Any]] | None:
    if meta.get("network") is not None or not meta.get("info", {}).get("frozen_backbone"):
        return None
    weights = {k.removeprefix("classifier."): v for k, v in state.items()
               if k.startswith("classifier.")}
    # the feature width: the Linear's input, or the RBF head's support vectors'
    dim = next((weights[k].shape[1] for k in ("weight", "1.weight", "1.support")
                if k in weights), None)
    if dim is None:
        return None
    try:
        head = build_head(meta.get("head"), int(dim), len(meta["class_names"]))
        head.load_state_dict(weights)
        meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the head's weights do not fit the head its header "
                              f"describes ({type(exc).__name__}: {str(exc)[:300]})") from None
    return FrozenHead(head).eval(), meta


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint file, parsed as data only."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: model not found; run the finetune stage first")
    if not path.is_file():  # a folder, or a FIFO that would block the read
        raise CheckpointError(f"{path}: not a regular file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: {_not_safetensors(path, exc)}") from None
    if header.get("format") != FORMAT or META_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without Graft's header (format "
                              f"{header.get('format')!r}); not a Graft checkpoint")
    try:
        meta = json.loads(header[META_KEY])
        _check_meta(meta)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its Graft header is not valid ({exc})") from None
    return meta, state


def _not_safetensors(path: Path, exc: Exception) -> str:
    """Why a file that safetensors cannot parse was refused, in words."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        return ("a pickle-based torch file (torch.save, as earlier Graft versions wrote); never "
                "loads pickles, which can run code: run the finetune stage again")
    return f"not a Graft checkpoint, or truncated ({exc}); run the finetune stage again"


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError("class_names must be a non-empty list of strings")
    if not isinstance(meta.get("backbone"), str) or not isinstance(meta.get("preprocessing"),
                                                                   dict):
        raise ValueError("backbone and preprocessing are missing")


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
    verdict = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if verdict.get("deployed") != "baseline":
        return layout.model
    if verdict.get("model_sha256") != sha256_file(layout.model):
        raise ValueError(f"{path}: says to deploy the baseline, but it judged another "
                         f"{layout.model} than the one there now; run the evaluate stage again")
    return layout.baseline_model
