"""The backbone that fills the embedding store: onnxruntime on the CPU, torch on CUDA.

On the CPU onnxruntime runs EfficientNet-Lite about 5× faster than torch eager, so each backbone
is exported once per (backbone, image size) to `data/features/<stem>-<size>.onnx`, beside its
store, and embeds through onnxruntime from then on. Its record (`….onnx.json`) says what it was
exported from (the weights file's sha256, torch and opset) and how it matched torch when it was
exported: the embeddings of a fixed sample of images, max |Δ| relative to their scale, at most
`PARITY_TOL`, else the stage stops (a store must never mix two networks' embeddings). When the
weights behind a backbone change, its graph is exported again and its store starts afresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.device import pick_device
from graft.core.files import atomic_output, sha256_file, write_json
from graft.data.images import Preprocessing

log = logging.getLogger(__name__)

OPSET = 17
PARITY_SAMPLE = 16  # images embedded by both torch and onnxruntime when the graph is exported
PARITY_TOL = 1e-4  # max |Δ| / max(1, max |torch embedding|): float32 rounding is ~1e-6


class EmbedderError(ValueError):
    """A backbone whose exported graph disagrees with torch; the message names the file."""


@dataclass
class Embedder:
    """Normalised images float32 (N, 3, S, S) → pooled embeddings float32 (N, D)."""

    run: Callable[[np.ndarray], np.ndarray]
    runtime: str  # "onnxruntime" or "torch"
    device: str  # "cpu" or "cuda"
    record: dict[str, Any]  # the graph's record (onnxruntime), or why torch is used

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


def graph_path(store: Path) -> Path:
    """data/features/<stem>-<size>.onnx for the store data/features/<stem>-<size>.npz."""
    return store.with_suffix(".onnx")


def identity(backbone: str, size: int, weights: Path) -> dict[str, Any]:
    """What a graph (and the embeddings in its store) depends on; a change means re-export."""
    import torch

    return {"backbone": backbone, "image_size": size, "weights_sha256": sha256_file(weights),
            "torch": torch.__version__.split("+")[0], "opset": OPSET}


def record_of(store: Path) -> dict[str, Any] | None:
    """The record of the store's exported graph, or None when there is none (or it is not
    readable)."""
    try:
        return json.loads(graph_path(store).with_suffix(".onnx.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale_graph(store: Path, wanted: dict[str, Any]) -> bool:
    """Whether the store's graph is missing or was exported from something else than `wanted`."""
    record = record_of(store)
    if record is None or not graph_path(store).exists():
        return True
    return {k: record.get(k) for k in wanted} != wanted


def load_embedder(store: Path, model: Callable[[], Any], pre: Preprocessing,
                  wanted: dict[str, Any], sample: Callable[[], np.ndarray]) -> Embedder:
    """The embedder of `store`'s backbone. On CUDA: torch (`model()` builds the network). On
    the CPU: the store's onnxruntime graph, exported first (from `model()`, its parity checked
    on `sample()`, normalised images) when it is missing or `stale_graph`."""
    device = pick_device()
    if device.type == "cuda":
        return _torch_embedder(model(), device, {"why": "CUDA: torch on the GPU"})
    path = graph_path(store)
    if stale_graph(store, wanted):
        network = model()
        try:
            record = _export(network, path, pre, wanted, sample())
        except EmbedderError:
            raise
        except Exception as exc:  # noqa: BLE001 — an architecture TorchScript cannot trace
            log.warning("%s: cannot export %s to ONNX (%s); embedding with torch",
                        path, wanted["backbone"], exc)
            return _torch_embedder(network, device, {"why": f"ONNX export failed: {exc}"})
    else:
        record = record_of(store)
    from graft.models.onnx_graph import create_session

    session = create_session(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return Embedder(lambda x: session.run(None, {name: np.ascontiguousarray(x)})[0],
                    "onnxruntime", "cpu", record)


def _export(network: Any, path: Path, pre: Preprocessing, wanted: dict[str, Any],
            sample: np.ndarray) -> dict[str, Any]:
    """Export `network` to `path` (atomically, with its record), checking parity on `sample`."""
    import torch

    from graft.models.onnx_graph import create_session, export_graph

    with atomic_output(path) as tmp:
        export_graph(network, tmp, pre.size, OPSET, "features")
        session = create_session(tmp, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            reference = network.eval()(torch.from_numpy(sample)).float().numpy()
        got = session.run(None, {session.get_inputs()[0].name: sample})[0]
        diff = float(np.abs(got - reference).max()) if len(sample) else 0.0
        scale = max(1.0, float(np.abs(reference).max())) if len(sample) else 1.0
        parity = {"n_images": len(sample), "max_abs_diff": diff, "relative": diff / scale,
                  "allowed": PARITY_TOL}
        if diff / scale > PARITY_TOL:
            raise EmbedderError(
                f"{path}: the exported {wanted['backbone']} differs from torch by "
                f"{diff:.3g} (relative {diff / scale:.3g} > {PARITY_TOL:g}) on {len(sample)} "
                "images; not used (remove the file to retry)")
        record = {**wanted, "parity": parity}
        write_json(path.with_suffix(".onnx.json"), record)
    return record


def _torch_embedder(network: Any, device: Any, why: dict[str, Any]) -> Embedder:
    import torch

    from graft.core.device import to_device, to_input

    net = to_device(network.eval(), device)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(to_input(torch.from_numpy(x), device)).float().cpu().numpy()

    return Embedder(run, "torch", device.type, why)


def parity_sample(paths: Sequence[Path], pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """The first PARITY_SAMPLE of `paths`, decoded and normalised."""
    chosen = list(paths)[:PARITY_SAMPLE]
    return pre.load(chosen, max_pixels) if chosen else np.zeros((0, 3, pre.size, pre.size),
                                                                np.float32)
