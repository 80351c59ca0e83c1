"""A frozen backbone's INT8 and FP16 copies, built once, with their embeddings of the images.

A model fitted on frozen pretrained features (graft.embeddings.scoring) ships as a backbone graph
with its head glued on (graft.models.onnx_graph.glue_head): the embedding store's own graph for
fp32, a reduced-precision copy of it for int8 and fp16. A copy, and what it computes on an image,
depend on the source graph (and for INT8 on the calibration images and settings), never on the
head, so they are kept in data/variants/ under a key of exactly those inputs:
`<stem>-<size>.<precision>-<key>.onnx`, its record (`.json`: what it was made from and how) and
its embeddings by image content hash (`.npz`, the store's format). A rerun that changed only the
head (a finetune.* param) glues the new head on and scores it from the kept embeddings: no
quantisation and no pass over the test images. The export stage still runs every file it writes
on a fixed sample of test images and holds it to those scores, so what is scored is what ships.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.files import atomic_output, sha256_file, write_json
from graft.data.images import Preprocessing
from graft.deploy.gates import run_on_images
from graft.embeddings.store import read_store, write_store
from graft.models.onnx_graph import create_session

KEEP = 3  # copies kept per backbone graph and precision (an experiment goes back and forth)


@dataclass(frozen=True)
class Variant:
    """A reduced-precision copy of a backbone graph, and whether this run had to build it."""

    precision: str  # "int8" | "fp16"
    graph: Path
    record: dict[str, Any]  # what it was made from, and the settings it was made with
    built: bool

    @property
    def store(self) -> Path:
        """Its embeddings by image sha256 (graft.embeddings.store's format)."""
        return self.graph.with_suffix(".npz")


def variant(precision: str, source: Path, folder: Path, inputs: dict[str, Any],
            make: Callable[[Path], dict[str, Any]]) -> Variant:
    """The kept copy of `source` whose record matches `inputs` (besides the source's sha256 and
    the onnxruntime that builds it) and whose bytes are the ones recorded, else a new one:
    `make(path)` writes it and returns its settings. Older copies beyond KEEP are removed."""
    import onnxruntime

    wanted = json.loads(json.dumps(  # as its record will hold it
        {"source": source.name, "source_sha256": sha256_file(source),
         "onnxruntime": onnxruntime.__version__, **inputs}, sort_keys=True, default=str))
    key = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()
    graph = folder / f"{source.stem}.{precision}-{key[:16]}.onnx"
    # a link is never a kept copy: replaced, so nothing outside data/variants is trusted or touched
    kept = graph.is_file() and not graph.is_symlink()
    record = _record(graph.with_suffix(".json")) if kept else None
    if record is not None and {k: record.get(k) for k in wanted} == wanted and \
            record.get("sha256") == sha256_file(graph):  # not replaced or damaged since
        graph.touch()  # recently used: the last to be pruned
        return Variant(precision, graph, record, built=False)
    folder.mkdir(parents=True, exist_ok=True)
    graph.with_suffix(".npz").unlink(missing_ok=True)  # embeddings of another build
    with atomic_output(graph) as tmp:
        record = {**wanted, "settings": make(tmp), "sha256": None}
        record["sha256"] = sha256_file(tmp)
    write_json(graph.with_suffix(".json"), record)
    _prune(folder, f"{source.stem}.{precision}-")
    return Variant(precision, graph, record, built=True)


def embeddings_of(variants: dict[str, Variant], shas: Sequence[str], paths: Sequence[Path],
                  pre: Preprocessing, batch_size: int,
                  subsets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each variant's embeddings float32 (len(subset), D) of its `subsets` rows (images `paths`
    with content hashes `shas`): the kept ones, the others computed (each image decoded once
    for all variants) and added to the variant's store."""
    stores = {name: read_store(v.store) for name, v in variants.items()}
    todo = {name: np.array([i for i in subsets[name] if shas[i] not in stores[name]], int)
            for name in variants}
    runners = {name: _runner(v.graph) for name, v in variants.items() if len(todo[name])}
    if runners:
        computed = run_on_images(runners, list(paths), pre, batch_size,
                                 {name: todo[name] for name in runners},
                                 "export: " + ", ".join(runners) + " backbone embeddings")
        for name, vectors in computed.items():
            stores[name].update(zip((shas[i] for i in todo[name]), vectors, strict=True))
            write_store(variants[name].store, stores[name])
    return {name: np.stack([stores[name][shas[i]] for i in subsets[name]]).astype(np.float32)
            for name in variants}


def _runner(graph: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = create_session(graph, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x)})[0]


def _record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _prune(folder: Path, prefix: str) -> None:
    """Keep the KEEP most recently used copies starting with `prefix` (graph, record, store)."""
    graphs = sorted(folder.glob(f"{prefix}*.onnx"), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    for old in graphs[KEEP:]:
        for path in (old, old.with_suffix(".json"), old.with_suffix(".npz")):
            path.unlink(missing_ok=True)
