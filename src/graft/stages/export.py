"""Stage `export`: models/model.pt → model.onnx (fp32), model.int8.onnx, model.fp16.onnx.

Every file carries its class names, preprocessing, backbone, training-params hash and its own
test accuracy as `graft.*` metadata (graft.deploy.onnx_export). Gates, on the test split of the
manifest (graft.deploy.gates):
- fp32 runs on every test image; it must reproduce the trained network (scale-aware |Δlogit|
  within `export.max_abs_diff`, same top-1) — on every test image when the backbone is frozen
  (the reference is the head on the cached embeddings), else on `export.parity_images` of them
  (the reference is torch) — else nothing is published;
- int8 (static QDQ quantisation, calibrated on training images, graft.deploy.quantize) runs on
  every test image and may lose at most `export.max_int8_drop` accuracy points against fp32 with
  at least `export.min_int8_agreement` of its top-1 equal to fp32's; fp16 likewise, on
  `export.fp16_check_images` of them (fp16 is for GPUs: on a CPU it runs at half fp32's speed).
A variant that fails its gate is not published (a stale copy is removed, since it no longer
belongs to model.onnx); the stage publishes what passed, writes the metrics, then raises.

The network exported is `graft.models.checkpoint.deployed_checkpoint`: models/model.pt, or the
from-scratch models/baseline.pt when the evaluate stage found negative transfer under
`evaluate.on_negative_transfer: use_baseline` (the files then say `graft.deployed = baseline`).
"""

from __future__ import annotations

import shutil
import time
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
from graft.embeddings.scoring import logits_from_store
from graft.models.checkpoint import deployed_checkpoint, load_checkpoint
from graft.models.inference import run_model

__all__ = ["ExportError", "run"]


def run(params: Params, layout: Layout) -> dict[str, Any]:
    """Export, quantise, score every file on the test split, gate, attach metadata, publish."""
    cfg = params.export
    start = time.perf_counter()
    source = deployed_checkpoint(layout)
    model, meta = load_checkpoint(source)
    pre: Preprocessing = meta["preprocessing"]
    df = read_manifest(layout.manifest)
    test = df[df["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ExportError(f"{layout.manifest}: no test images; the parity check needs at least one")
    y_test = encode_labels(test["label"], list(meta["class_names"]), layout.manifest, "test",
                           "the model")
    paths = absolute_paths(test, layout.manifest)
    reference, rows, against = _reference(model, meta, layout, test, paths, cfg)

    layout.models.mkdir(parents=True, exist_ok=True)
    # Candidates are built in a hidden folder beside the outputs, so publishing is a rename.
    tmp_dir = temp_dir(layout.onnx)
    try:
        base = metadata(meta, source, len(paths))
        files, settings = _write_files(model, pre, cfg, tmp_dir, base,
                                       _calibration_paths(df, layout, cfg))
        checked = {name: np.arange(len(paths)) for name in files}
        if "fp16" in files and 0 < cfg.fp16_check_images < len(paths):
            checked["fp16"] = _fixed_sample(test, cfg.fp16_check_images)
        logits = score_files(files, paths, pre, cfg.batch_size, checked)
        parity = check_parity(reference, logits["fp32"][rows], cfg.max_abs_diff, layout.onnx,
                              against)
        accuracy = {"fp32": float((logits["fp32"].argmax(1) == y_test).mean())}
        variants, failures = {}, []
        for name in [n for n in files if n != "fp32"]:
            gate = Gate(getattr(cfg, f"max_{name}_drop"), getattr(cfg, f"min_{name}_agreement"))
            variants[name], failure = gate_variant(
                name, logits["fp32"][checked[name]], logits[name], y_test[checked[name]], gate,
                settings[name], layout.onnx_variant(name))
            accuracy[name] = variants[name]["accuracy"]
            failures += [failure] if failure else []
        passed = {name: path for name, path in files.items()
                  if name == "fp32" or variants[name]["passed"]}
        for name, path in passed.items():
            attach_metadata(path, {**base, "precision": name,
                                   "test_accuracy": round(accuracy[name], 6),
                                   "n_test": len(checked[name])})
        # one set: a variant left from an older export no longer belongs to the new model.onnx
        stale = [layout.onnx_variant(n) for n in ("int8", "fp16") if n not in passed]
        publish_set(passed, stale, layout.models)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    metrics = {
        **_files_metrics(layout, source, cfg, meta),
        **parity,
        "max_abs_diff_allowed": cfg.max_abs_diff,
        "parity_passed": True,
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


def _reference(model: nn.Module, meta: dict[str, Any], layout: Layout, test: pd.DataFrame,
               paths: list[Path], cfg: ExportParams) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits the fp32 file must reproduce, the test rows they are of, what they are): from
    the embedding store on every test image when the backbone is frozen (the head on cached
    embeddings: no image pass), else the torch network on a fixed sample."""
    logits = logits_from_store(model, meta, layout, test)
    if logits is not None:
        return logits, np.arange(len(test)), "the head on the cached embeddings"
    rows = _fixed_sample(test, cfg.parity_images)
    logits = run_model(model, [paths[i] for i in rows], meta["preprocessing"], cfg.batch_size,
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


def _write_files(model: nn.Module, pre: Preprocessing, cfg: ExportParams, folder: Path,
                 base: dict[str, Any], calibration: list[Path]
                 ) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """model.onnx and the int8 / fp16 variants asked for, in `folder`, with the metadata every
    file shares (each file's own precision and accuracy come after the gates); returns
    {precision: path} and each variant's settings."""
    files = {"fp32": folder / "model.onnx"}
    to_onnx(model, files["fp32"], pre.size, cfg.opset, output_name="logits", metadata=base)
    settings: dict[str, dict[str, Any]] = {"fp32": {}}
    if cfg.int8:
        files["int8"] = folder / "model.int8.onnx"
        settings["int8"] = quantize_int8(
            files["fp32"], files["int8"], pre.load(calibration), cfg.calibration,
            cfg.per_channel, cfg.reduce_range, cfg.activation_type, cfg.weight_type)
    if cfg.fp16:
        files["fp16"] = folder / "model.fp16.onnx"
        settings["fp16"] = to_fp16(files["fp32"], files["fp16"])
    for path in files.values():
        attach_metadata(path, base)
    return files, settings


def _calibration_paths(df: Any, layout: Layout, cfg: ExportParams) -> list[Path]:
    """Training images for INT8 calibration: all of them, or `calibration_images` drawn with
    `seed`."""
    train = df[df["split"] == "train"]
    if len(train) > cfg.calibration_images:
        train = train.sample(n=cfg.calibration_images, random_state=cfg.seed).sort_index()
    return absolute_paths(train, layout.manifest)


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
