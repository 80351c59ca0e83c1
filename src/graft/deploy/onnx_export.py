"""A torch network → an ONNX file that carries its labels and preprocessing.

`to_onnx` writes the graph (input `image` float32 (N, 3, S, S), dynamic batch) and checks it with
onnx.checker; `metadata` is what every exported file carries as `graft.*` metadata_props (class
names, mean, std, input size, resize policy, backbone, strategy, hashes), so it runs on an edge
device with nothing but onnxruntime (graft.deploy.onnx_model reads it back).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from torch import nn

from graft.core import VERSION
from graft.core.files import sha256_file
from graft.data.images import Preprocessing
from graft.deploy.onnx_model import encode_metadata
from graft.models.onnx_graph import GraphError, export_graph


class ExportError(ValueError):
    """No trustworthy .onnx can be produced; the message says which file and why."""


def to_onnx(
    model: nn.Module,
    path: Path | str,
    image_size: int,
    opset: int,
    output_name: str = "logits",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write `model` (graft.models.onnx_graph.export_graph) with graft.* metadata_props
    attached, in place: callers that publish wrap it in a temporary path."""
    import onnx  # heavy import, kept out of module import time

    try:
        proto = export_graph(model, path, image_size, opset, output_name)
    except GraphError as exc:
        raise ExportError(str(exc)) from None
    for key, value in encode_metadata(metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "graft"
    proto.producer_version = VERSION
    onnx.save(proto, str(path))


def metadata(meta: dict[str, Any], model_path: Path, n_test: int) -> dict[str, Any]:
    """What every exported file carries (plus its own precision and test accuracy)."""
    pre: Preprocessing = meta["preprocessing"]
    info = meta.get("info", {})
    training = json.dumps({"backbone": meta["backbone"], "input_size": pre.size,
                           "params": info.get("params")}, sort_keys=True, default=str)
    return {
        "class_names": list(meta["class_names"]),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "input_size": pre.size,
        "resize": pre.resize,
        "backbone": meta["backbone"],
        "version": VERSION,
        "strategy": info.get("strategy", "unknown"),
        "deployed": deployed_kind(meta),
        "params_sha256": hashlib.sha256(training.encode()).hexdigest(),  # finetune params
        "source_sha256": sha256_file(model_path),  # which model.pt this file came from
        "export_id": uuid.uuid4().hex,  # one per export: a set's files share it (deploy.publish)
        "n_test": n_test,
    }


def deployed_kind(meta: dict[str, Any]) -> str:
    """'baseline' for a from-scratch baseline network, 'model' for the transferred one."""
    network = meta.get("network") or {}
    return "baseline" if network.get("kind") == "baseline" else "model"
