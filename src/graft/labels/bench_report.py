"""The labeling benchmark's outputs (graft.labels.benchmark): results.csv, results.md (means ±
95% t-interval half-widths over the seeds; gains vs random paired by seed) and metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from graft.core.files import write_csv, write_json, write_text

PERCENT = {"accuracy", "top_k", "top_2k", "found"}  # shown in percent; the rest as counts


def t_interval(values: pd.Series) -> tuple[float, float]:
    """(mean, 95% half-width; NaN for one value) of a Student t interval."""
    n, mean = len(values), float(values.mean())
    half = (float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))
            if n > 1 else float("nan"))
    return mean, half


def _cell(values: pd.Series, metric: str, signed: bool = False) -> str:
    mean, half = t_interval(values)
    scale = 100 if metric in PERCENT else 1
    sign = "+" if signed else ""
    text = f"{scale * mean:{sign}.1f}"
    return text if np.isnan(half) else f"{text} ± {scale * half:.1f}"


def suggest_table(df: pd.DataFrame) -> list[str]:
    """Accuracy (%) per method and number of labels, then each method's paired gain vs random."""
    budgets = sorted(df["labels"].unique())
    lines = ["| dataset | method | " + " | ".join(f"{b} labels" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for (dataset, method), g in df.groupby(["dataset", "method"], sort=True):
        cells = [_cell(g.loc[g["labels"] == b, "value"], "accuracy") for b in budgets]
        lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
        random = df.loc[(df["dataset"] == dataset) & (df["method"] == "random")]
        if method != "random" and len(random):
            gain = g.merge(random, on=["labels", "seed"], suffixes=("", "_r"))
            gain["value"] = gain["value"] - gain["value_r"]
            cells = [_cell(gain.loc[gain["labels"] == b, "value"], "accuracy", signed=True)
                     for b in budgets]
            lines.append(f"| {dataset} | {method} − random | " + " | ".join(cells) + " |")
    return lines


def metric_table(df: pd.DataFrame, metrics: list[str]) -> list[str]:
    lines = ["| dataset | images | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for (dataset, labels), g in df.groupby(["dataset", "labels"], sort=True):
        cells = [_cell(g.loc[g["metric"] == m, "value"], m) for m in metrics]
        lines.append(f"| {dataset} | {labels} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: pd.DataFrame, seeds: int) -> str:
    parts = {name: results.loc[results["benchmark"] == name] for name in
             ("suggest", "label_errors", "near_duplicates")}
    lines = [f"Means ± 95% t-interval half-width over {seeds} seed(s).", ""]
    if len(parts["suggest"]):
        lines += ["## Which images to label: test accuracy (%) against labels", "",
                  *suggest_table(parts["suggest"]), ""]
    if len(parts["label_errors"]):
        lines += ["## Flipped labels found (%) in the top k / top 2k of the audit's ranking", "",
                  *metric_table(parts["label_errors"], ["top_k", "top_2k", "k"]), ""]
    if len(parts["near_duplicates"]):
        lines += ["## Planted near-copies found (%), other test images flagged", "",
                  *metric_table(parts["near_duplicates"], ["found", "other_flagged", "n_test",
                                                             "too_small"]),
                  ""]
    return "\n".join(lines)


def headline(results: pd.DataFrame) -> dict[str, Any]:
    """metrics.json: mean of every (benchmark, dataset, method, labels, metric)."""
    means = results.groupby(["benchmark", "dataset", "method", "labels", "metric"])["value"].mean()
    out: dict[str, Any] = {}
    for (bench, dataset, method, labels, metric), value in means.items():
        out.setdefault(bench, {}).setdefault(dataset, {}).setdefault(method, {})[
            f"{metric}@{labels}"] = round(float(value), 4)
    return out


def write_outputs(results: pd.DataFrame, out: Path, p: Any, wall_s: float) -> dict:
    write_csv(out / "results.csv", list(results.columns),
              results.itertuples(index=False, name=None))
    write_text(out / "results.md", markdown(results, p.seeds))
    metrics = {"means": headline(results), "seeds": p.seeds, "wall_seconds": round(wall_s, 1)}
    write_json(out / "metrics.json", metrics)
    return metrics
