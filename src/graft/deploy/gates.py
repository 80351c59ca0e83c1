"""The export stage's gates: is each exported file the network it came from?

- fp32 is held to parity with a reference on the images it is checked on: the trained network's
  logits (from the embedding store for a frozen backbone, so on every test image for free; from
  torch on a fixed sample otherwise). Parity is scale-aware: |Δlogit| may be `max_abs_diff`
  times the image's largest |logit| when that exceeds 1 — a temperature-scaled head with logits
  in the hundreds differs by more in absolute terms at the same float32 precision — and every
  checked image must keep its top-1.
- INT8 and FP16 are held to fp32: at most `max_drop` accuracy points lost AND at least
  `min_agreement` of their top-1 equal to fp32's (a small net drop can hide many flips).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.progress import Progress
from graft.data.images import Preprocessing, decoded_batches
from graft.deploy.onnx_export import ExportError
from graft.deploy.onnx_model import OnnxClassifier

# What a user has after a failed export, precisely: dvc repro deletes a stage's outputs before
# running it, so "the previous model.onnx was kept" was true only outside DVC.
NOTHING_PUBLISHED = (
    "nothing was published: models/*.onnx are what they were before this run (none after "
    "`dvc repro`, which deletes a stage's outputs before running it); what ships, the "
    "champion in models/champion/, is unchanged")


@dataclass(frozen=True)
class Gate:
    """A reduced-precision variant's limits against fp32."""

    max_drop: float  # accuracy points
    min_agreement: float  # fraction of top-1 equal to fp32's


def score_files(files: dict[str, Path], paths: list[Path], pre: Preprocessing, batch_size: int,
                subsets: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Logits of each .onnx file on the image files, each image decoded once; a file with an
    entry in `subsets` (row indices) runs on those images only. On the CPU in float32 input:
    the checks are about the graphs, not about a GPU's maths."""
    runners = {}
    for name, path in files.items():
        session = OnnxClassifier(path, providers=["CPUExecutionProvider"])
        runners[name] = functools.partial(_run, session, path=path, name=name)
    return run_on_images(runners, paths, pre, batch_size, subsets,
                         "export: scoring " + ", ".join(files))


def run_on_images(runners: dict[str, Callable[[np.ndarray], np.ndarray]], paths: list[Path],
                  pre: Preprocessing, batch_size: int,
                  subsets: dict[str, np.ndarray] | None, label: str) -> dict[str, np.ndarray]:
    """Each runner's outputs on the image files (normalised float32 batches in, (n, ·) out),
    each image decoded once however many runners want it; a runner with an entry in `subsets`
    (row indices) gets those images only."""
    subsets = subsets or {}
    wanted = {name: np.zeros(len(paths), bool) for name in runners}
    for name in runners:
        wanted[name][subsets.get(name, slice(None))] = True
    union = np.flatnonzero(np.any(list(wanted.values()), axis=0)) if runners else []
    out: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    total = sum(int(w.sum()) for w in wanted.values())
    with Progress(label, total, "img") as bar:
        for start, x in zip(range(0, len(union), batch_size),
                            decoded_batches([paths[i] for i in union], pre, batch_size),
                            strict=True):
            for name, run in runners.items():
                rows = wanted[name][union[start : start + len(x)]]
                if rows.any():
                    out[name].append(run(x[rows]))
                    bar.update(int(rows.sum()))
    return {name: np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
            for name, chunks in out.items()}


def _run(session: OnnxClassifier, x: np.ndarray, *, path: Path, name: str) -> np.ndarray:
    try:
        return session.logits(x, len(x))
    except Exception as exc:  # onnxruntime's own error types; e.g. int8 at tiny sizes
        raise ExportError(f"{path.name}: onnxruntime cannot run the {name} model on {x.shape} "
                          f"({exc})") from None


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Two logit arrays (N, C): the largest |difference|, the largest relative to each row's
    logit scale (max |logit|, at least 1), and top-1 agreement."""
    diff = np.abs(reference - other).max(axis=1) if len(reference) else np.zeros(0)
    scale = np.maximum(1.0, np.abs(reference).max(axis=1)) if len(reference) else np.ones(0)
    return {"max_abs_diff": float(diff.max(initial=0.0)),
            "max_scaled_diff": float((diff / scale).max(initial=0.0)),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean())
            if len(reference) else 1.0}


def check_parity(reference: np.ndarray, exported: np.ndarray, max_abs_diff: float,
                 onnx_path: Path, against: str) -> dict[str, Any]:
    """fp32 against the reference on the same images (see the module docstring), else
    ExportError (nothing is published)."""
    parity = compare(reference, exported)
    flips = top1_flips(reference, exported, max_abs_diff)
    if not (parity["max_scaled_diff"] <= max_abs_diff and flips == 0):
        raise ExportError(
            f"{onnx_path}: parity check against {against} failed on {len(reference)} images: "
            f"max |Δlogit| = {parity['max_abs_diff']:.3g}, relative to the logit scale "
            f"{parity['max_scaled_diff']:.3g} (allowed {max_abs_diff:.3g}), top-1 changed on "
            f"{flips} image(s) (allowed 0); {NOTHING_PUBLISHED}")
    return {**parity, "top1_flips": flips, "n_parity_images": len(reference),
            "parity_against": against}


def top1_flips(reference: np.ndarray, other: np.ndarray, tolerance: float) -> int:
    """Images whose top-1 class changed by more than rounding: `other`'s choice is worse than
    the reference's by over `tolerance` of the row's logit scale in the reference (a near-tie
    that float32 rounding tips either way is not a flip)."""
    if not len(reference):
        return 0
    rows = np.arange(len(reference))
    margin = reference[rows, reference.argmax(1)] - reference[rows, other.argmax(1)]
    scale = np.maximum(1.0, np.abs(reference).max(axis=1))
    return int((margin / scale > tolerance).sum())


def gate_variant(name: str, fp32: np.ndarray, logits: np.ndarray, y: np.ndarray, gate: Gate,
                 settings: dict[str, Any], path: Path) -> tuple[dict[str, Any], str | None]:
    """One variant's result against fp32 on the same images (`fp32`, `logits`, labels `y`), and
    the failure in words (None when it passes)."""
    base = float((fp32.argmax(1) == y).mean())
    accuracy = float((logits.argmax(1) == y).mean())
    drop = 100 * (base - accuracy)  # accuracy points
    result = {**compare(fp32, logits), "accuracy": accuracy, "fp32_accuracy_same_images": base,
              "n_images": len(y), "accuracy_drop_points": round(drop, 3),
              "max_drop_points": gate.max_drop, "min_top1_agreement": gate.min_agreement,
              **settings}
    problems = []
    if drop > gate.max_drop:
        problems.append(f"a drop of {drop:.2f} accuracy points exceeds export.max_{name}_drop "
                        f"= {gate.max_drop}")
    if result["top1_agreement"] < gate.min_agreement:
        problems.append(f"top-1 agreement with fp32 {100 * result['top1_agreement']:.1f}% is "
                        f"below export.min_{name}_agreement = {gate.min_agreement}")
    result["passed"] = not problems
    failure = (f"{path}: {name} on {len(y)} test images ({100 * accuracy:.2f}% vs fp32 "
               f"{100 * base:.2f}%): {'; '.join(problems)}; not published (model.onnx was)"
               if problems else None)
    return result, failure
