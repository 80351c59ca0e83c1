"""The export stage: models/model.pt → model.onnx (fp32), model.int8.onnx, model.fp16.onnx.

Every file carries its class names, preprocessing, backbone, training-params hash and its own
test accuracy as `graft.*` metadata, so it runs on an edge device with nothing but onnxruntime.
Gates, all on the test split of the manifest:
- fp32 must match the torch model on every test image (max |Δlogit| within
  `export.max_abs_diff`, same top-1), else nothing is published;
- int8 (static QDQ quantisation, calibrated on training images) may lose at most
  `export.max_int8_drop` accuracy points against fp32, fp16 at most `export.max_fp16_drop`.
A variant that fails its gate is not published (a stale copy is removed, since it no longer
belongs to model.onnx); the stage publishes what passed, writes the metrics, then raises.

The network exported is `graft.checkpoint.deployed_checkpoint`: models/model.pt, or the
from-scratch models/baseline.pt when the evaluate stage found negative transfer under
`evaluate.on_negative_transfer: use_baseline` (the files then say `graft.deployed = baseline`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import graft
from graft.checkpoint import deployed_checkpoint, load_checkpoint
from graft.config import Params
from graft.files import sha256_file, write_json
from graft.images import Preprocessing
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest
from graft.onnx_model import OnnxClassifier, attach_metadata, encode_metadata
from graft.quantize import quantize_int8, to_fp16

MIN_OPSET = 17  # the opset the export was verified with; older runtimes lack some fused ops
MAX_OPSET = 20  # the highest the TorchScript exporter (dynamo=False) writes in torch 2.14


class ExportError(ValueError):
    """The stage cannot produce a trustworthy .onnx; the message says which file and why."""


def run(params: Params, layout: Layout) -> dict[str, Any]:
    """Export, quantise, score every file on the test split, gate, attach metadata, publish."""
    cfg = params.export
    if not MIN_OPSET <= cfg.opset <= MAX_OPSET:
        raise ExportError(
            f"{layout.params}: export.opset is {cfg.opset}; supported {MIN_OPSET}..{MAX_OPSET}"
        )
    start = time.perf_counter()
    source = deployed_checkpoint(layout)
    model, meta = load_checkpoint(source)
    preprocessing: Preprocessing = meta["preprocessing"]
    names = list(meta["class_names"])
    df = read_manifest(layout.manifest)
    test = df[df["split"] == "test"]
    test_paths = absolute_paths(test, layout.manifest)
    if not test_paths:
        raise ExportError(f"{layout.manifest}: no test images; the parity check needs at least one")
    y_test = np.array([names.index(lb) if lb in names else -1 for lb in test["label"]])

    layout.models.mkdir(parents=True, exist_ok=True)
    # Candidates are built in a hidden folder beside the outputs, so publishing is a rename.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=layout.models) as tmp_dir:
        tmp = Path(tmp_dir)
        base = _metadata(meta, source, len(test_paths))
        files = {"fp32": tmp / layout.onnx.name}
        to_onnx(model, files["fp32"], preprocessing.size, cfg.opset, output_name="logits",
                metadata=base)
        settings: dict[str, dict[str, Any]] = {"fp32": {}}
        if cfg.int8:
            files["int8"] = tmp / layout.onnx_int8.name
            calib = _calibration_paths(df, layout.manifest, cfg.calibration_images, cfg.seed)
            settings["int8"] = quantize_int8(
                files["fp32"], files["int8"], preprocessing.load(calib), cfg.calibration,
                cfg.per_channel, cfg.reduce_range, cfg.activation_type, cfg.weight_type)
        if cfg.fp16:
            files["fp16"] = tmp / layout.onnx_fp16.name
            settings["fp16"] = to_fp16(files["fp32"], files["fp16"])
        for path in files.values():  # the final metadata, with test accuracy, comes below
            attach_metadata(path, base)

        logits = score_files(model, files, test_paths, preprocessing, cfg.batch_size)
        parity = compare(logits["torch"], logits["fp32"])
        if not (parity["max_abs_diff"] <= cfg.max_abs_diff and parity["top1_agreement"] == 1.0):
            raise ExportError(
                f"{layout.onnx}: parity check failed on {len(test_paths)} test images: "
                f"max |Δlogit| = {parity['max_abs_diff']:.3g} (allowed {cfg.max_abs_diff:.3g}), "
                f"top-1 agreement = {parity['top1_agreement']:.4f} (required 1.0); "
                "the previous model.onnx, if any, was kept"
            )
        accuracy = {name: float((logits[name].argmax(1) == y_test).mean()) for name in files}
        limits = {"int8": cfg.max_int8_drop, "fp16": cfg.max_fp16_drop}
        failures, variants = [], {}
        for name in [n for n in files if n != "fp32"]:
            drop = 100 * (accuracy["fp32"] - accuracy[name])  # accuracy points
            variants[name] = {**compare(logits["fp32"], logits[name]), "accuracy": accuracy[name],
                              "accuracy_drop_points": round(drop, 3),
                              "max_drop_points": limits[name], "passed": drop <= limits[name],
                              **settings[name]}
            if drop > limits[name]:
                failures.append(
                    f"{_path_of(layout, name)}: {name} test accuracy {100 * accuracy[name]:.2f}% "
                    f"vs fp32 {100 * accuracy['fp32']:.2f}%: a drop of {drop:.2f} points exceeds "
                    f"export.max_{name}_drop = {limits[name]}; not published (model.onnx was)")

        published = {}
        for name, path in files.items():
            if name != "fp32" and not variants[name]["passed"]:
                continue
            attach_metadata(path, {**base, "precision": name,
                                   "test_accuracy": round(accuracy[name], 6)})
            os.replace(path, _path_of(layout, name))
            published[name] = _path_of(layout, name)
    for name in ("int8", "fp16"):  # a stale variant no longer belongs to the new model.onnx
        if name not in published:
            _path_of(layout, name).unlink(missing_ok=True)

    metrics = {
        "onnx": str(_relative(layout.onnx, layout.root)),
        "onnx_bytes": layout.onnx.stat().st_size,
        "onnx_mb": round(layout.onnx.stat().st_size / 2**20, 3),
        "opset": cfg.opset,
        "backbone": meta["backbone"],
        "source": str(_relative(source, layout.root)),
        "deployed": _deployed(meta),
        "input_size": preprocessing.size,
        "n_classes": len(names),
        **parity,
        "n_parity_images": len(test_paths),
        "max_abs_diff_allowed": cfg.max_abs_diff,
        "parity_passed": True,
        "accuracy": accuracy["fp32"],
        "torch_accuracy": float((logits["torch"].argmax(1) == y_test).mean()),
        **{name: {**v, **_size(_path_of(layout, name), layout)} for name, v in variants.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(layout.metrics("export"), metrics)
    if failures:
        raise ExportError("; ".join(failures))
    return metrics


def to_onnx(
    model: nn.Module,
    path: Path | str,
    image_size: int,
    opset: int,
    output_name: str = "logits",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write `model` (eval mode, CPU) as ONNX: input `image` float32 (N, 3, S, S) with a dynamic
    batch axis; graft.* metadata_props attached; checked with onnx.checker. Writes `path` in
    place: callers that publish wrap it in atomic_output."""
    import onnx  # heavy import, kept out of module import time

    model = model.eval().cpu()
    dummy = torch.zeros(2, 3, image_size, image_size)  # batch 2: nothing specialises to N=1
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy; the dynamo exporter it points to
        # needs onnxscript, which Graft does not depend on.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=[output_name],
            dynamic_axes={"image": {0: "batch"}, output_name: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    for key, value in encode_metadata(metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "graft"
    proto.producer_version = graft.__version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: exported model fails onnx.checker: {exc}") from None
    onnx.save(proto, str(path))


@torch.inference_mode()
def score_files(
    model: nn.Module,
    files: dict[str, Path],
    paths: list[Path],
    preprocessing: Preprocessing,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Logits of the torch model ('torch') and of each .onnx file on the same decoded batches
    (each image decoded once). All on the CPU in float32 input: the checks are about the
    graphs, not about a GPU's TF32 maths."""
    sessions = {name: OnnxClassifier(path, providers=["CPUExecutionProvider"])
                for name, path in files.items()}
    model = model.eval().cpu()
    out: dict[str, list[np.ndarray]] = {name: [] for name in ["torch", *files]}
    for i in range(0, len(paths), batch_size):
        x = preprocessing.load(paths[i : i + batch_size])
        out["torch"].append(model(torch.from_numpy(x)).float().numpy())
        for name, session in sessions.items():
            try:
                out[name].append(session.logits(x, batch_size))
            except Exception as exc:  # onnxruntime's own error types; e.g. int8 at tiny sizes
                raise ExportError(f"{files[name].name}: onnxruntime cannot run the {name} "
                                  f"model on {x.shape} ({exc})") from None
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Parity of two logit arrays (N, C): the largest |difference| and top-1 agreement."""
    return {"max_abs_diff": float(np.abs(reference - other).max()),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean())}


def _calibration_paths(df: Any, manifest: Path, limit: int, seed: int) -> list[Path]:
    """Training images for INT8 calibration: all of them, or `limit` drawn with `seed`."""
    train = df[df["split"] == "train"]
    if len(train) > limit:
        train = train.sample(n=limit, random_state=seed).sort_index()
    return absolute_paths(train, manifest)


def _metadata(meta: dict[str, Any], model_path: Path, n_test: int) -> dict[str, Any]:
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
        "version": graft.__version__,
        "strategy": info.get("strategy", "unknown"),
        "deployed": _deployed(meta),
        "params_sha256": hashlib.sha256(training.encode()).hexdigest(),  # finetune params
        "source_sha256": sha256_file(model_path),  # which model.pt this file came from
        "n_test": n_test,
    }


def _deployed(meta: dict[str, Any]) -> str:
    """'baseline' for a from-scratch baseline network, 'model' for the transferred one."""
    network = meta.get("network") or {}
    return "baseline" if network.get("kind") == "baseline" else "model"


def _path_of(layout: Layout, name: str) -> Path:
    return {"fp32": layout.onnx, "int8": layout.onnx_int8, "fp16": layout.onnx_fp16}[name]


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
