"""The export stage's gates: every exported file scored on the same decoded test images as the
torch network it came from, fp32 held to parity with torch, INT8 / FP16 to an accuracy drop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.data.images import Preprocessing
from graft.deploy.onnx_export import ExportError
from graft.deploy.onnx_model import OnnxClassifier

# What a user has after a failed export, precisely: dvc repro deletes a stage's outputs before
# running it, so "the previous model.onnx was kept" was true only outside DVC.
NOTHING_PUBLISHED = (
    "nothing was published: models/*.onnx are what they were before this run (none after "
    "`dvc repro`, which deletes a stage's outputs before running it); what ships, the "
    "champion in models/champion/, is unchanged")


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


def check_parity(logits: dict[str, np.ndarray], max_abs_diff: float, onnx_path: Path
                 ) -> dict[str, float]:
    """fp32 against torch on every test image: within `max_abs_diff` and the same top-1 on all,
    else ExportError (nothing is published)."""
    parity = compare(logits["torch"], logits["fp32"])
    if not (parity["max_abs_diff"] <= max_abs_diff and parity["top1_agreement"] == 1.0):
        raise ExportError(
            f"{onnx_path}: parity check failed on {len(logits['fp32'])} test images: "
            f"max |Δlogit| = {parity['max_abs_diff']:.3g} (allowed {max_abs_diff:.3g}), "
            f"top-1 agreement = {parity['top1_agreement']:.4f} (required 1.0); {NOTHING_PUBLISHED}")
    return parity


def gate_variants(logits: dict[str, np.ndarray], y_test: np.ndarray,
                  limits: dict[str, float], settings: dict[str, dict[str, Any]],
                  paths: dict[str, Path]) -> tuple[dict[str, float], dict[str, dict], list[str]]:
    """(accuracy of every file, each reduced-precision variant's gate result, the failures in
    words): a variant passes when it loses at most limits[name] accuracy points to fp32."""
    accuracy = {name: float((logits[name].argmax(1) == y_test).mean())
                for name in logits if name != "torch"}
    variants, failures = {}, []
    for name in [n for n in accuracy if n != "fp32"]:
        drop = 100 * (accuracy["fp32"] - accuracy[name])  # accuracy points
        variants[name] = {**compare(logits["fp32"], logits[name]), "accuracy": accuracy[name],
                          "accuracy_drop_points": round(drop, 3),
                          "max_drop_points": limits[name], "passed": drop <= limits[name],
                          **settings[name]}
        if drop > limits[name]:
            failures.append(
                f"{paths[name]}: {name} test accuracy {100 * accuracy[name]:.2f}% "
                f"vs fp32 {100 * accuracy['fp32']:.2f}%: a drop of {drop:.2f} points exceeds "
                f"export.max_{name}_drop = {limits[name]}; not published (model.onnx was)")
    return accuracy, variants, failures
