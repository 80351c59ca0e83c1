"""The model against the baselines: point figures, 95% bootstrap intervals on the same
resamples for every contender, per-class scores and the transfer verdict, as the metrics dict of
the evaluate stage (metrics/evaluate.json)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from graft.evaluation import metrics as stats


def compare(y_test: np.ndarray, probas: dict[str, np.ndarray], names: list[str],
            resamples: int, seed: int) -> dict[str, Any]:
    """The metrics dict of contenders {"model": proba, baseline name: proba, …} (class
    probabilities (N, k) on the same test images): figures and intervals on the same bootstrap
    resamples, the model's confusion matrix and per-class scores, the transfer verdict."""
    point = {name: stats.headline(y_test, pr) for name, pr in probas.items()}
    samples = dict(zip(probas, stats.bootstrap(y_test, list(probas.values()), resamples, seed),
                       strict=True))
    cm = stats.confusion(y_test, probas["model"].argmax(axis=1), len(names))
    return summarise(point, samples, cm, names)


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


