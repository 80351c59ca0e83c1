"""Stage `export`: models/model.pt → model.onnx (fp32), model.int8.onnx, model.fp16.onnx.

Every file carries its class names, preprocessing, backbone, training-params hash and its own
test accuracy as `graft.*` metadata (graft.deploy.onnx_export). Two ways to build them:
- a frozen pretrained backbone with a head (a feature strategy): each file is the graph that
  filled the embedding store — or its INT8 / FP16 copy, built once and kept with its embeddings
  of the test images (graft.deploy.variants) — with the head glued on. Each precision is scored
  on the test split from those embeddings, and each file is run on `export.parity_images` test
  images and must give those logits (scale-aware |Δlogit| within `export.max_abs_diff`, same
  top-1), so a rerun that changed only the head runs no image through a backbone but those;
- any other network (fine-tuned, an ensemble, a baseline): exported whole from torch and every
  file scored on the test images; fp32 must reproduce the trained network on them (the heads on
  the cached embeddings for an ensemble of frozen backbones, else torch on `parity_images`).
Gates, on the test split of the manifest (graft.deploy.gates): a parity failure publishes
nothing; int8 (static QDQ quantisation, calibrated on training images, graft.deploy.quantize) may
lose at most `export.max_int8_drop` accuracy points against fp32 with at least
`export.min_int8_agreement` of its top-1 equal to fp32's; fp16 likewise, on
`export.fp16_check_images` of them (fp16 is for GPUs: on a CPU it runs at half fp32's speed).
A variant that fails its gate is not published (a stale copy is removed, since it no longer
belongs to model.onnx); the stage publishes what passed, writes the metrics, then raises.

The network exported is `graft.models.checkpoint.deployed_checkpoint`: models/model.pt, or the
from-scratch models/baseline.pt when the evaluate stage found negative transfer under
`evaluate.on_negative_transfer: use_baseline` (the files then say `graft.deployed = baseline`).
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from graft.core.config import ExportParams, Params
from graft.core.files import temp_dir, write_json
from graft.core.layout import Layout
from graft.data.images import Preprocessing
from graft.data.manifest import absolute_paths, encode_labels, read_manifest
from graft.deploy.gates import Gate, check_parity, gate_variant, score_files
from graft.deploy.onnx_export import ExportError, deployed_kind, metadata, to_onnx
from graft.deploy.onnx_model import attach_metadata
from graft.deploy.publish import publish_set
from graft.deploy.quantize import quantize_int8, to_fp16
from graft.deploy.variants import Variant, embeddings_of, variant
from graft.embeddings.runtime import graph_path
from graft.embeddings.scoring import logits_from_store
from graft.embeddings.store import embeddings, read_store, store_file
from graft.models.checkpoint import (
    FrozenHead,
    deployed_checkpoint,
    load_checkpoint,
)
from graft.models.heads import head_logits
from graft.models.inference import run_model
from graft.models.onnx_graph import glue_head

__all__ = ["ExportError", "run"]

# the export params an INT8 copy depends on (with the calibration images and the source graph)
QUANTISATION_KEYS = ("calibration", "per_channel", "reduce_range", "activation_type",
                     "weight_type")


def run(params: Params, layout: Layout) -> dict[str, Any]:
    """Export, quantise, score every file on the test split, gate, attach metadata, publish."""
    cfg = params.export
    start = time.perf_counter()
    source = deployed_checkpoint(layout)
    model, meta = load_checkpoint(source, head_only=True)
    df = read_manifest(layout.manifest)
    test = df[df["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ExportError(f"{layout.manifest}: no test images; the parity check needs at least one")
    y_test = encode_labels(test["label"], list(meta["class_names"]), layout.manifest, "test",
                           "the model")
    paths = absolute_paths(test, layout.manifest)

    layout.models.mkdir(parents=True, exist_ok=True)
    layout.variants.mkdir(parents=True, exist_ok=True)  # a DVC output, even when left empty
    # Candidates are built in a hidden folder beside the outputs, so publishing is a rename.
    tmp_dir = temp_dir(layout.onnx)
    try:
        job = _Job(source, model, meta, layout, df, test, paths, cfg, tmp_dir,
                   metadata(meta, source, len(paths)))
        built = _glued(job) or _whole(job)
        logits, checked = built.logits, job.checked
        accuracy = {"fp32": float((logits["fp32"].argmax(1) == y_test).mean())}
        variants, failures = {}, []
        for name in [n for n in built.files if n != "fp32"]:
            gate = Gate(getattr(cfg, f"max_{name}_drop"), getattr(cfg, f"min_{name}_agreement"))
            variants[name], failure = gate_variant(
                name, logits["fp32"][checked[name]], logits[name], y_test[checked[name]], gate,
                built.settings[name], layout.onnx_variant(name))
            accuracy[name] = variants[name]["accuracy"]
            failures += [failure] if failure else []
        passed = {name: path for name, path in built.files.items()
                  if name == "fp32" or variants[name]["passed"]}
        for name, path in passed.items():
            attach_metadata(path, {**job.base, "precision": name,
                                   "test_accuracy": round(accuracy[name], 6),
                                   "n_test": len(checked[name])})
        # one set: a variant left from an older export no longer belongs to the new model.onnx
        stale = [layout.onnx_variant(n) for n in ("int8", "fp16") if n not in passed]
        publish_set(passed, stale, layout.models)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    metrics = {
        **_files_metrics(layout, source, cfg, meta),
        **built.parity,
        "max_abs_diff_allowed": cfg.max_abs_diff,
        "parity_passed": True,
        "scored_from": built.scored_from,
        "accuracy": accuracy["fp32"],
        "n_test": len(paths),
        **{name: {**v, **_size(layout.onnx_variant(name), layout)}
           for name, v in variants.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(layout.metrics("export"), metrics)
    write_json(layout.metrics("onnx"), headline(metrics))
    if failures:
        raise ExportError("; ".join(failures))
    return metrics


@dataclass
class _Job:
    """What both ways of building the files read."""

    source: Path  # the checkpoint
    model: nn.Module  # a FrozenHead when the checkpoint is a frozen backbone with a head
    meta: dict[str, Any]
    layout: Layout
    df: pd.DataFrame
    test: pd.DataFrame
    paths: list[Path]
    cfg: ExportParams
    folder: Path  # where the candidate files are written
    base: dict[str, Any]  # the metadata every file carries

    @property
    def pre(self) -> Preprocessing:
        return self.meta["preprocessing"]

    @functools.cached_property
    def checked(self) -> dict[str, np.ndarray]:
        """The test rows each precision is scored on: every one, but fp16 (slow on a CPU) on
        `fp16_check_images` of them."""
        rows = {"fp32": np.arange(len(self.paths))}
        if self.cfg.int8:
            rows["int8"] = rows["fp32"]
        if self.cfg.fp16:
            n = self.cfg.fp16_check_images
            rows["fp16"] = _fixed_sample(self.test, n) if 0 < n < len(self.paths) else rows["fp32"]
        return rows


@dataclass
class _Built:
    files: dict[str, Path]  # precision → candidate file
    settings: dict[str, dict[str, Any]]  # how each reduced-precision file was made
    logits: dict[str, np.ndarray]  # precision → logits on its checked rows
    parity: dict[str, Any]  # fp32's parity check (graft.deploy.gates.check_parity)
    scored_from: str


def _glued(job: _Job) -> _Built | None:
    """A frozen pretrained backbone (one): each file is the embedding store's graph, or its kept
    INT8 / FP16 copy (graft.deploy.variants), with the head glued on. Scored from the cached
    embeddings of that graph; each file is run on `parity_images` test images and must match
    them. None when the model is not such a network or the store lacks a test image."""
    info, network = job.meta.get("info", {}), job.meta.get("network") or {}
    if not info.get("frozen_backbone") or network.get("kind") in ("ensemble", "baseline"):
        return None
    store_path = store_file(job.layout, job.meta["backbone"], job.pre.size)
    graph = graph_path(store_path)
    store = read_store(store_path)
    if not graph.is_file() or not set(job.test["sha256"]) <= set(store):
        return None
    head = job.model.classifier
    variants = _variants(job, graph)
    files = {"fp32": job.folder / "model.onnx"} | {
        name: job.folder / f"model.{name}.onnx" for name in variants}
    for name, path in files.items():
        glue_head(variants[name].graph if name in variants else graph, head, path, "logits")
        attach_metadata(path, job.base)
    shas = job.test["sha256"].tolist()
    features = {"fp32": embeddings(store, job.test)} | embeddings_of(
        variants, shas, job.paths, job.pre, job.cfg.batch_size,
        {name: job.checked[name] for name in variants})
    logits = {name: head_logits(head, features[name]) for name in files}
    # the files themselves, on a fixed sample: each must compute what it was scored by
    sample = {name: np.intersect1d(_fixed_sample(job.test, job.cfg.parity_images),
                                   job.checked[name]) for name in files}
    ran = score_files(files, job.paths, job.pre, job.cfg.batch_size, sample)
    stores = {"fp32": store_path} | {name: v.store for name, v in variants.items()}
    parity = {name: check_parity(
        logits[name][np.searchsorted(job.checked[name], sample[name])], ran[name],
        job.cfg.max_abs_diff, job.layout.onnx_variant(name),
        f"the head on the embeddings in {_relative(stores[name], job.layout.root)}")
        for name in files}
    settings = {name: {**v.record["settings"], "parity": parity[name],
                       "backbone_graph": str(_relative(v.graph, job.layout.root)),
                       "backbone_graph_reused": not v.built} for name, v in variants.items()}
    return _Built(files, settings, logits, parity["fp32"], "cached embeddings")


def _variants(job: _Job, graph: Path) -> dict[str, Variant]:
    """The INT8 and FP16 copies of the backbone graph asked for, kept or built."""
    cfg, out = job.cfg, {}
    if cfg.int8:
        calibration = _calibration_rows(job.df, cfg)
        inputs = {"calibration_sha256": calibration["sha256"].tolist(), "size": job.pre.size,
                  **{k: getattr(cfg, k) for k in QUANTISATION_KEYS}}
        out["int8"] = variant("int8", graph, job.layout.variants, inputs, lambda path: _int8(
            graph, path, job.pre.load(absolute_paths(calibration, job.layout.manifest)), cfg))
    if cfg.fp16:
        out["fp16"] = variant("fp16", graph, job.layout.variants, {},
                              lambda path: to_fp16(graph, path))
    return out


def _whole(job: _Job) -> _Built:
    """Any other network (fine-tuned, an ensemble, a baseline): exported whole from torch, its
    copies quantised from that file, every file scored on the test images."""
    if isinstance(job.model, FrozenHead):  # the store lacked an image: the whole network
        job.model, _ = load_checkpoint(job.source)
    reference, rows, against = _reference(job)
    files, settings = _write_files(job)
    logits = score_files(files, job.paths, job.pre, job.cfg.batch_size, job.checked)
    parity = check_parity(reference, logits["fp32"][rows], job.cfg.max_abs_diff,
                          job.layout.onnx, against)
    return _Built(files, settings, logits, parity, "images")


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics/onnx.json, what `dvc metrics show` prints beside metrics/scores.json (one table
    of at most 100 columns): the test accuracy of int8 and its top-1 agreement with fp32, and
    fp16's accuracy (fp32's is scores.json's `accuracy`; every figure: metrics/export.json)."""
    out = {}
    for name, keys in (("int8", ("accuracy", "top1_agreement")), ("fp16", ("accuracy",))):
        variant = metrics.get(name)
        if variant and variant["passed"]:
            out[name] = round(variant["accuracy"], 4)
            if "top1_agreement" in keys:
                out[f"{name}_agree"] = round(variant["top1_agreement"], 4)
    return out


def _reference(job: _Job) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits the fp32 file must reproduce, the test rows they are of, what they are): from
    the embedding store on every test image when the backbones are frozen (an ensemble: the
    heads on cached embeddings, no image pass), else the torch network on a fixed sample."""
    logits = logits_from_store(job.model, job.meta, job.layout, job.test)
    if logits is not None:
        return logits, np.arange(len(job.test)), "the head on the cached embeddings"
    rows = _fixed_sample(job.test, job.cfg.parity_images)
    logits = run_model(job.model, [job.paths[i] for i in rows], job.pre, job.cfg.batch_size,
                       torch.device("cpu"), label="export: torch reference")
    return logits, rows, "torch"


def _fixed_sample(rows: pd.DataFrame, n: int) -> np.ndarray:
    """Indices of `n` rows chosen by content hash: the same images on every run."""
    return np.sort(np.argsort(rows["sha256"].to_numpy(), kind="stable")[:n])


def _files_metrics(layout: Layout, source: Path, cfg: ExportParams, meta: dict[str, Any]
                   ) -> dict[str, Any]:
    """What was published, from which network, at which size."""
    pre: Preprocessing = meta["preprocessing"]
    return {
        "onnx": str(_relative(layout.onnx, layout.root)),
        "onnx_bytes": layout.onnx.stat().st_size,
        "onnx_mb": round(layout.onnx.stat().st_size / 2**20, 3),
        "opset": cfg.opset,
        "backbone": meta["backbone"],
        "source": str(_relative(source, layout.root)),
        "deployed": deployed_kind(meta),
        "input_size": pre.size,
        "n_classes": len(meta["class_names"]),
    }


def _write_files(job: _Job) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """model.onnx (the whole network from torch) and the int8 / fp16 copies asked for, in the
    job's folder, with the metadata every file shares (each file's own precision and accuracy
    come after the gates); returns {precision: path} and each copy's settings."""
    cfg, pre = job.cfg, job.pre
    files = {"fp32": job.folder / "model.onnx"}
    to_onnx(job.model, files["fp32"], pre.size, cfg.opset, output_name="logits",
            metadata=job.base)
    settings: dict[str, dict[str, Any]] = {"fp32": {}}
    if cfg.int8:
        files["int8"] = job.folder / "model.int8.onnx"
        calibration = absolute_paths(_calibration_rows(job.df, cfg), job.layout.manifest)
        settings["int8"] = _int8(files["fp32"], files["int8"], pre.load(calibration), cfg)
    if cfg.fp16:
        files["fp16"] = job.folder / "model.fp16.onnx"
        settings["fp16"] = to_fp16(files["fp32"], files["fp16"])
    for path in files.values():
        attach_metadata(path, job.base)
    return files, settings


def _int8(source: Path, out: Path, calibration: np.ndarray, cfg: ExportParams
          ) -> dict[str, Any]:
    settings = {k: getattr(cfg, k) for k in QUANTISATION_KEYS}  # the ones a kept copy is keyed by
    return quantize_int8(source, out, calibration, method=settings.pop("calibration"), **settings)


def _calibration_rows(df: pd.DataFrame, cfg: ExportParams) -> pd.DataFrame:
    """Training images for INT8 calibration: all of them, or `calibration_images` drawn with
    `seed`."""
    train = df[df["split"] == "train"]
    if len(train) > cfg.calibration_images:
        train = train.sample(n=cfg.calibration_images, random_state=cfg.seed).sort_index()
    return train


def _size(path: Path, layout: Layout) -> dict[str, Any]:
    if not path.exists():  # failed its gate: not published
        return {"file": None, "bytes": None, "size_vs_fp32": None}
    size = path.stat().st_size
    return {"file": str(_relative(path, layout.root)), "bytes": size,
            "mb": round(size / 2**20, 3),
            "size_vs_fp32": round(size / layout.onnx.stat().st_size, 4)}


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path
