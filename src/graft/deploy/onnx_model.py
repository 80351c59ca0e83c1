"""The ONNX side of Graft: the model's metadata, onnxruntime sessions, and batched prediction.

An exported model is self-contained: its `graft.*` metadata_props carry the class names and the
preprocessing, so `OnnxClassifier(path)` needs nothing but the .onnx file. Used by the export
stage's gates, by `graft predict`, `graft bench` and the benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.images import DEFAULT_MAX_PIXELS, ImageError, Preprocessing, read_image
from graft.models.onnx_graph import GraphError, available_providers, create_session

PREFIX = "graft."
# Stored as JSON text (lists, numbers); the other keys are plain strings, readable in Netron.
JSON_KEYS = frozenset({"class_names", "mean", "std", "input_size"})
REQUIRED_KEYS = ("class_names", "mean", "std", "input_size", "resize", "backbone", "version")
MAX_INPUT_SIZE = 4096  # pixels; one 4096² float32 image is already 200 MB


__all__ = ["GraphError", "OnnxClassifier", "OnnxModelError", "available_providers",
           "create_session", "read_metadata", "softmax"]


class OnnxModelError(ValueError):
    """An .onnx file Graft cannot use; the message names the file and the problem."""


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """{'class_names': [...], 'backbone': 'x', ...} → {'graft.class_names': '[...]', ...}."""
    return {
        PREFIX + key: json.dumps(value) if key in JSON_KEYS else str(value)
        for key, value in values.items()
    }


def attach_metadata(path: Path | str, values: dict[str, Any]) -> None:
    """Replace the graft.* metadata_props of the .onnx file at `path` with `values` (in place:
    callers that publish work on a temporary file); other props are kept."""
    import onnx  # heavy import, kept out of module import time

    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for key, value in [*kept, *encode_metadata(values).items()]:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def decode_metadata(props: dict[str, str], path: Path | str) -> dict[str, Any]:
    """The inverse of `encode_metadata`, keeping only graft.* keys; checks the required ones."""
    values: dict[str, Any] = {}
    for key, text in props.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        try:
            values[name] = json.loads(text) if name in JSON_KEYS else text
        except json.JSONDecodeError:
            raise OnnxModelError(f"{path}: metadata {key} is not valid JSON: {text!r}") from None
    if not values:
        raise OnnxModelError(f"{path}: not a Graft model (no graft.* metadata)")
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:
        raise OnnxModelError(f"{path}: Graft metadata incomplete, missing {', '.join(missing)}")
    problem = _metadata_problem(values)
    if problem:
        raise OnnxModelError(f"{path}: metadata {problem}")
    return values


def _metadata_problem(values: dict[str, Any]) -> str | None:
    """What is wrong with the decoded metadata's values, in words, or None."""
    names, size = values["class_names"], values["input_size"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"graft.class_names must be a non-empty list of strings, got {_short(names)}"
    for key in ("mean", "std"):
        v = values[key]
        if not (isinstance(v, list) and len(v) == 3 and all(
                isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)
                for x in v)):
            return f"graft.{key} must be three finite numbers (R, G, B), got {_short(v)}"
    if any(x <= 0 for x in values["std"]):
        return f"graft.std must be > 0 in every channel, got {values['std']} (a division by it)"
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_INPUT_SIZE:
        return f"graft.input_size must be an integer in [1, {MAX_INPUT_SIZE}], got {_short(size)}"
    return None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_graph(session: Any, meta: dict[str, Any], path: Path | str) -> None:
    """The graph's input (N, 3, S, S) and output (N, n_classes) agree with the metadata where
    the graph states a size; OnnxModelError naming the file otherwise."""
    size, n = meta["input_size"], len(meta["class_names"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise OnnxModelError(f"{path}: expected one image input and a logits output, found "
                             f"{len(inputs)} input(s), {len(outputs)} output(s)")
    shape_in, shape_out = list(inputs[0].shape), list(outputs[0].shape)
    if len(shape_in) != 4 or not _fits(shape_in[1:], [3, size, size]):
        raise OnnxModelError(f"{path}: graph input {inputs[0].name} has shape {shape_in}, but "
                             f"the metadata says (N, 3, {size}, {size}) (graft.input_size)")
    if len(shape_out) != 2 or not _fits(shape_out[1:], [n]):
        raise OnnxModelError(f"{path}: graph output {outputs[0].name} has shape {shape_out}, "
                             f"but the metadata names {n} classes (graft.class_names)")


def _fits(dims: list[Any], expected: list[int]) -> bool:
    """Each static dim equals the expected one (named or unknown dims fit anything)."""
    return all(not isinstance(d, int) or d == e for d, e in zip(dims, expected, strict=True))


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The parsed graft.* metadata of an .onnx file, keys without the prefix."""
    import onnx  # heavy import, kept out of module import time

    path = _existing(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError, among others
        raise OnnxModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:  # random bytes can parse as an empty protobuf message
        raise OnnxModelError(f"{path}: not an ONNX model (no graph)")
    return decode_metadata({p.key: p.value for p in model.metadata_props}, path)


def preprocessing_from_metadata(meta: dict[str, Any], path: Path | str) -> Preprocessing:
    """The Preprocessing the model was trained with; refuses a resize policy Graft lacks."""
    if meta["resize"] != Preprocessing.resize:
        raise OnnxModelError(
            f"{path}: resize policy {meta['resize']!r} is not supported "
            f"(this Graft implements {Preprocessing.resize!r})"
        )
    return Preprocessing(
        int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]), meta["resize"]
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum so exp() cannot overflow."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxClassifier:
    """A Graft .onnx model: class names and preprocessing from its metadata, logits from
    onnxruntime."""

    def __init__(
        self, path: Path | str, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.preprocessing = preprocessing_from_metadata(self.metadata, self.path)
        self.session = create_session(self.path, providers, threads)
        check_graph(self.session, self.metadata, self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def logits(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Normalised float32 (N, 3, S, S) → float32 (N, n_classes), `batch_size` images a call."""
        size = self.preprocessing.size
        if x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise ValueError(f"{self.path}: expects input (N, 3, {size}, {size}), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        outputs = [
            self.session.run([self.output_name], {self.input_name: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
        n_classes = len(self.class_names)
        if outputs and outputs[0].shape[1:] != (n_classes,):  # a dynamic output dim: checked now
            raise OnnxModelError(f"{self.path}: the graph outputs {outputs[0].shape[1:]} "
                                 f"logits per image, the metadata names {n_classes} classes")
        return np.concatenate(outputs) if outputs else np.zeros((0, n_classes), np.float32)

    def predict_files(
        self,
        paths: Sequence[Path | str],
        batch_size: int = 32,
        top_k: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """(rows, failures): a row is {'path', 'top_k': [(label, probability), ...]} best first,
        in input order; a file that cannot be decoded is skipped and listed as (path, problem)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, len(self.class_names))
        rows: list[dict[str, Any]] = []
        failures: list[tuple[str, str]] = []
        for start in range(0, len(paths), batch_size):
            arrays, kept = [], []
            for path in paths[start : start + batch_size]:
                try:
                    arrays.append(self.preprocessing.to_array(read_image(path, max_pixels)))
                except ImageError as exc:
                    failures.append((str(path), exc.problem))
                    continue
                kept.append(str(path))
            if not kept:
                continue
            probs = softmax(self.logits(np.stack(arrays), batch_size))
            for path, p in zip(kept, probs, strict=True):
                best = np.argsort(-p, kind="stable")[:k]
                rows.append({"path": path,
                             "top_k": [(self.class_names[i], float(p[i])) for i in best]})
        return rows, failures


def _existing(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "file not found"
        raise OnnxModelError(f"{path}: {problem}")
    return path
