"""Evaluate stage: score the model on the test split, beside baselines that had no pretraining.

Inputs: models/model.pt, data/prepared/ (manifest + images). Outputs: metrics/evaluate.json,
reports/evaluate.md, plots/confusion.csv (long format for `dvc plots`), plots/confusion.png and
models/baseline.pt (the best baseline's network).

The model is scored end to end from the image files with its own preprocessing. Two baselines
learn from the same training images (baselines.py). All figures carry 95% percentile bootstrap
intervals computed on the same resamples for every contender, and the verdict says whether
transfer learning beat the best baseline (`negative_transfer` when it did not).

`evaluate.on_negative_transfer` decides what happens then: `warn` reports it, `fail` exits
non-zero after writing everything, `use_baseline` records `"deployed": "baseline"` so that the
export stage publishes models/baseline.pt instead of the transferred model (the report says so).
The confusion matrix and per-class scores are always the transferred model's; the deployed
baseline's headline figures are in `baselines_scores`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from graft import baselines
from graft import metrics as stats
from graft.checkpoint import load_checkpoint, save_checkpoint
from graft.config import Params
from graft.files import atomic_output, sha256_file, write_csv, write_json, write_text
from graft.inference import pick_device, run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest

BASELINES = ("pixels_logreg", "small_cnn")


class EvaluateError(ValueError):
    """Inputs the evaluate stage cannot score; the message names the file and the problem."""


class NegativeTransferError(EvaluateError):
    """`evaluate.on_negative_transfer: fail` and a baseline beat the model (outputs are written)."""


def run(params: Params, layout: Layout) -> dict[str, Any]:
    """Score the model and the baselines on the test split; write every output; return metrics."""
    p = params.evaluate
    df = read_manifest(layout.manifest)
    model, meta = load_checkpoint(layout.model)
    names: list[str] = list(meta["class_names"])
    test = df[df["split"] == "test"]
    if test.empty:
        raise EvaluateError(f"{layout.manifest}: no test images (split 'test'); nothing to score")
    y_test = encode(test["label"], names, layout.manifest, "test")

    device = pick_device()
    logits = run_model(model, absolute_paths(test, layout.manifest), meta["preprocessing"],
                       p.batch_size, device)
    proba = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    contenders = {"model": proba}
    info = {}
    trained = train_baselines(params, df, layout.manifest, names, device)
    for name, result in trained.items():
        contenders[name], info[name] = result.proba, result.info

    point = {name: stats.headline(y_test, pr) for name, pr in contenders.items()}
    samples = dict(zip(contenders, stats.bootstrap(y_test, list(contenders.values()),
                                                   p.bootstrap, p.seed), strict=True))
    cm = stats.confusion(y_test, proba.argmax(axis=1), len(names))
    result = summarise(point, samples, cm, names)
    result["baselines_info"] = info
    result["on_negative_transfer"] = p.on_negative_transfer
    use_baseline = result["negative_transfer"] and p.on_negative_transfer == "use_baseline"
    result["deployed"] = "baseline" if use_baseline else "model"
    result["deployed_network"] = result["best_baseline"] if use_baseline else meta["backbone"]
    result["model_sha256"] = sha256_file(layout.model)  # which model.pt this verdict is about

    best = result["best_baseline"]
    save_checkpoint(layout.baseline_model, trained[best].model, best, names,
                    baselines.preprocessing(p.baseline_image_size),
                    network={"kind": "baseline", "name": best, "size": p.baseline_image_size},
                    strategy=f"baseline:{best}", params={"evaluate": dataclasses.asdict(p)},
                    test_accuracy=result["baselines"][best], **info[best])
    write_confusion(layout.plots, names, y_test, proba.argmax(axis=1), cm)
    write_text(layout.reports / "evaluate.md", report_markdown(result))
    write_json(layout.metrics("evaluate"), result)
    guard(result, p.on_negative_transfer, layout)
    return result


def guard(result: dict[str, Any], mode: str, layout: Layout) -> None:
    """Apply `evaluate.on_negative_transfer`: 'warn' leaves it to the report and the WARNING
    line; 'fail' raises NegativeTransferError (after the outputs are written, so the evidence
    stays on disk and DVC/CI stop before the export stage publishes a model that lost)."""
    if mode == "fail" and result["negative_transfer"]:
        raise NegativeTransferError(
            f"{layout.model}: {_verdict(result)}; evaluate.on_negative_transfer is 'fail' "
            f"(see {layout.reports / 'evaluate.md'}; set it to 'warn' to continue anyway)"
        )


def encode(labels: pd.Series, names: list[str], manifest: Path, split: str) -> np.ndarray:
    """Label strings → class indices in the model's order; unknown labels are an error."""
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise EvaluateError(
            f"{manifest}: {split} label(s) {', '.join(map(repr, unknown))} are not among the "
            f"model's classes ({', '.join(names)}); retrain on this manifest or fix the labels"
        )
    return np.array([index[label] for label in labels], np.int64)


def train_baselines(params: Params, df: pd.DataFrame, manifest: Path, names: list[str],
                    device: torch.device) -> dict[str, baselines.BaselineResult]:
    """Fit both baselines on train (val for selection) and predict the test split."""
    p = params.evaluate
    splits = {}
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        labels = encode(part["label"], names, manifest, split)
        splits[split] = baselines.load_split(absolute_paths(part, manifest), labels,
                                             p.baseline_image_size)
    if len(splits["train"].y) == 0:
        raise EvaluateError(f"{manifest}: no training images; baselines need the train split")
    tr, va, te, k = splits["train"], splits["val"], splits["test"], len(names)
    return {
        "pixels_logreg": baselines.pixels_logreg(tr, va, te, k, p.logreg_c_grid, p.seed),
        "small_cnn": baselines.small_cnn(tr, va, te, k, p.cnn_epochs, p.cnn_batch_size,
                                         p.cnn_lr, p.cnn_weight_decay, p.seed, device),
    }


def summarise(point: dict[str, dict[str, Any]], samples: dict[str, dict[str, np.ndarray]],
              cm: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The metrics dict: model figures with intervals, per class, baselines and the verdict.

    `transfer_gain_ci` is a paired interval: model minus best baseline on each resample.
    """
    model, model_s = point["model"], samples["model"]
    others = [name for name in point if name != "model"]
    out: dict[str, Any] = {}
    for key in ("accuracy", "macro_f1", "roc_auc"):
        out[key] = _num(model[key])
        out[f"{key}_ci"] = [_num(v) for v in stats.interval(model_s[key])]
    scores = stats.per_class_scores(cm)
    out["per_class"] = {
        name: {m: (int(scores[m][i]) if m == "support" else float(scores[m][i]))
               for m in ("precision", "recall", "f1", "support")}
        for i, name in enumerate(names)
    }
    out["confusion"] = cm.astype(int).tolist()
    out["baselines"] = {name: _num(point[name]["accuracy"]) for name in others}
    out["baselines_ci"] = {name: [_num(v) for v in stats.interval(samples[name]["accuracy"])]
                           for name in others}
    out["baselines_scores"] = {name: {key: _num(value) for key, value in point[name].items()}
                               for name in others}
    best = max(others, key=lambda name: point[name]["accuracy"]) if others else None
    gain = float(model["accuracy"] - point[best]["accuracy"]) if best else None
    out["best_baseline"] = best
    out["transfer_gain"] = gain
    out["transfer_gain_ci"] = (
        [_num(v) for v in stats.interval(model_s["accuracy"] - samples[best]["accuracy"])]
        if best else [None, None]
    )
    out["negative_transfer"] = bool(gain is not None and gain < 0)
    out["n_test"] = int(cm.sum())
    out["n_classes"] = len(names)
    out["class_names"] = list(names)
    return out


def _num(value: Any) -> float | None:
    """A JSON-safe float: NaN (an undefined ROC-AUC) becomes null."""
    value = float(value)
    return None if math.isnan(value) else value


def write_confusion(plots: Path, names: list[str], y_true: np.ndarray, y_pred: np.ndarray,
                    cm: np.ndarray) -> None:
    """plots/confusion.csv (one row per test image: actual,predicted) and plots/confusion.png."""
    write_csv(plots / "confusion.csv", ["actual", "predicted"],
              [(names[t], names[p]) for t, p in zip(y_true, y_pred, strict=True)])
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    k = len(names)
    side = max(4.0, 0.6 * k + 2)  # inches: leaves room for ten classes' names and counts
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Actual class")
    ax.set_title(f"Confusion matrix, test split ({int(cm.sum())} images)")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            dark = top > 0 and cm[i, j] > top / 2
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    fig.tight_layout()
    with atomic_output(plots / "confusion.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(value: float | None, ci: list[float | None] | None = None, percent: bool = True) -> str:
    """A figure with its interval: '78.4% [76.6, 80.2]' (percent) or '0.975 [0.970, 0.980]'."""
    if value is None:
        return "n/a"
    scale, digits, unit = (100, 1, "%") if percent else (1, 3, "")
    text = f"{scale * value:.{digits}f}{unit}"
    if ci and None not in ci:
        text += f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    return text


def _auc(value: float | None, ci: list[float | None] | None = None) -> str:
    """ROC-AUC as a number; 'n/a' when undefined."""
    return _fmt(value, ci, percent=False)


def _verdict(m: dict[str, Any]) -> str:
    if m["best_baseline"] is None:
        return "no baseline was scored"
    points, best = 100 * abs(m["transfer_gain"]), m["best_baseline"]
    lo, hi = m["transfer_gain_ci"]
    unsure = lo is not None and lo <= 0 <= hi
    caveat = " (within noise: the paired 95% interval includes 0)" if unsure else ""
    if m["negative_transfer"]:
        return (f"NEGATIVE TRANSFER — the best baseline ({best}) beats the transferred model "
                f"by {points:.1f} points{caveat}")
    if m["transfer_gain"] == 0:
        return f"no gain: the transferred model ties with the best baseline ({best})"
    return f"transfer helped: +{points:.1f} points over the best baseline ({best}){caveat}"


def report_markdown(m: dict[str, Any]) -> str:
    """reports/evaluate.md: the model and the baselines with 95% intervals, gain and verdict."""
    lines = [
        "# Evaluation on the test split",
        "",
        f"{m['n_test']} test images, {len(m['class_names'])} classes; "
        "95% bootstrap intervals in brackets.",
        "",
        "| Contender | Accuracy | Macro-F1 | ROC-AUC (OvR) |",
        "|---|---|---|---|",
        f"| transferred model | {_fmt(m['accuracy'], m['accuracy_ci'])} | "
        f"{_fmt(m['macro_f1'], m['macro_f1_ci'])} | {_auc(m['roc_auc'], m['roc_auc_ci'])} |",
    ]
    for name, acc in m["baselines"].items():
        scores = m.get("baselines_scores", {}).get(name, {})
        lines.append(f"| baseline: {name} | {_fmt(acc, m['baselines_ci'][name])} | "
                     f"{_fmt(scores.get('macro_f1'))} | {_auc(scores.get('roc_auc'))} |")
    gain = m["transfer_gain"]
    if gain is not None:
        lo, hi = m["transfer_gain_ci"]
        ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if None not in (lo, hi) else ""
        lines += ["", f"Transfer gain: {100 * gain:+.1f} points{ci} (paired bootstrap)."]
    lines += ["", f"**Verdict: {_verdict(m)}.**", ""]
    if m.get("deployed") == "baseline":
        lines += [f"**Deployed: the {m['best_baseline']} baseline, not the transferred model.** "
                  "evaluate.on_negative_transfer is use_baseline, so the export stage publishes "
                  "models/baseline.pt (trained from scratch on the same images) as "
                  "models/model.onnx.", ""]
    return "\n".join(lines)


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """What the CLI prints after the stage; a loud WARNING line on negative transfer."""
    m = metrics
    lines = [
        f"test images: {m['n_test']}",
        f"model accuracy {_fmt(m['accuracy'], m['accuracy_ci'])}, "
        f"macro-F1 {_fmt(m['macro_f1'], m['macro_f1_ci'])}, "
        f"ROC-AUC {_auc(m['roc_auc'], m['roc_auc_ci'])}",
    ]
    for name, acc in m["baselines"].items():
        lines.append(f"baseline {name}: accuracy {_fmt(acc, m['baselines_ci'][name])}")
    if m["negative_transfer"]:
        lines.append(f"WARNING: {_verdict(m)}")
    else:
        lines.append(_verdict(m))
    if m.get("deployed") == "baseline":
        lines.append(f"DEPLOYING THE BASELINE: export will publish {m['best_baseline']} "
                     "(models/baseline.pt), not the transferred model (on_negative_transfer: "
                     "use_baseline)")
    return lines
