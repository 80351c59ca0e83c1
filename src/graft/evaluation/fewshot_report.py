"""The few-shot benchmark's results: per-cell means with t-intervals, the best cell, the
ranking check of the transferability scores, and the files written (graft.evaluation.fewshot
runs the grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from graft.core.files import write_csv, write_json, write_text
from graft.strategies import strategy_names

BASELINE = ("pixels", "pixels_logreg")  # (backbone, strategy) columns of the baseline rows
RESULT_COLUMNS = ("dataset", "backbone", "strategy", "shots", "episode", "accuracy", "seconds")
CELL = ["dataset", "backbone", "strategy", "shots"]
RANK_COLUMNS = ("dataset", "shots", "episode", "backbone", "logme", "h_score")
EPISODE = ["dataset", "shots", "episode"]
ENSEMBLE = "ensemble"  # the backbone column of the ensemble rows (all of `backbones`)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: mean accuracy and its 95% t-interval over the episodes (Student t with
    n − 1 degrees of freedom; a single episode has no interval: NaN)."""
    def t_interval(acc: pd.Series) -> pd.Series:
        n, mean = len(acc), float(acc.mean())
        half = (float(stats.t.ppf(0.975, n - 1) * acc.std(ddof=1) / np.sqrt(n))
                if n > 1 else float("nan"))
        return pd.Series({"episodes": n, "mean": mean, "low": mean - half, "high": mean + half,
                          "half_width": half})

    return (results.groupby(CELL, sort=True)["accuracy"].apply(t_interval).unstack()
            .reset_index())


def markdown(cells: pd.DataFrame) -> str:
    """results.md: one table row per cell, accuracy in percent ± the 95% half-width."""
    lines = ["Mean test accuracy (%) ± 95% t-interval half-width over episodes "
             "(Student t, n − 1 degrees of freedom).", "",
             "| dataset | backbone | strategy | shots | episodes | accuracy (%) |",
             "|---|---|---|---:|---:|---:|"]
    for r in cells.itertuples():
        lines.append(f"| {r.dataset} | {r.backbone} | {r.strategy} | {r.shots} | "
                     f"{int(r.episodes)} | {100 * r.mean:.1f} ± {100 * r.half_width:.1f} |")
    return "\n".join(lines) + "\n"


def best_cells(cells: pd.DataFrame) -> dict:
    """{dataset: {shots: the best cell by mean accuracy}}, baseline included."""
    best: dict = {}
    for (dataset, shots), group in cells.groupby(["dataset", "shots"], sort=True):
        top = group.loc[group["mean"].idxmax()]
        best.setdefault(str(dataset), {})[str(shots)] = {
            "backbone": top["backbone"], "strategy": top["strategy"],
            "accuracy": round(float(top["mean"]), 4),
            "interval": [round(float(top["low"]), 4), round(float(top["high"]), 4)]}
    return best


def ranking_check(results: pd.DataFrame, scores: pd.DataFrame) -> dict:
    """{score: {strategy: ...}}: over the episodes (dataset, shots, episode), how often the
    backbone with the highest score was the most accurate one for that strategy
    (`picked_best` of `episodes`, ties in accuracy count as a hit), and the mean accuracy lost
    to the best backbone by following the score (`mean_regret`, points), overall and per
    dataset; `random_regret` is what picking a backbone at random loses on average (the mean
    backbone's accuracy below the best), the bar a useful score must clear."""
    runs = results[results["strategy"].isin(strategy_names("features"))
                   & results["backbone"].isin(scores["backbone"])]
    check: dict = {}
    for score in ("logme", "h_score"):
        picks = scores.loc[scores.groupby(EPISODE)[score].idxmax(), [*EPISODE, "backbone"]]
        for strategy, group in runs.groupby("strategy", sort=True):
            best = group.groupby(EPISODE)["accuracy"].max().rename("best")
            picked = group.merge(picks, on=[*EPISODE, "backbone"]).set_index(EPISODE)["accuracy"]
            mean = group.groupby(EPISODE)["accuracy"].mean().rename("mean")
            table = pd.concat([best, mean, picked.rename("picked")], axis=1).dropna()
            table = table.reset_index()
            table["hit"] = table["picked"] >= table["best"]
            table["regret"] = 100 * (table["best"] - table["picked"])
            table["random_regret"] = 100 * (table["best"] - table["mean"])
            summary = _hits(table)
            summary["by_dataset"] = {str(name): _hits(part)
                                     for name, part in table.groupby("dataset", sort=True)}
            check.setdefault(score, {})[str(strategy)] = summary
    return check


def _hits(table: pd.DataFrame) -> dict:
    return {"picked_best": int(table["hit"].sum()), "episodes": int(len(table)),
            "mean_regret": round(float(table["regret"].mean()), 2),
            "random_regret": round(float(table["random_regret"].mean()), 2)}


def write_outputs(results: pd.DataFrame, out: Path, wall_s: float,
                  scores: pd.DataFrame | None = None) -> dict:
    """results.csv, results.md, plots/accuracy_vs_shots.csv, ranking.csv and metrics.json."""
    write_csv(out / "results.csv", RESULT_COLUMNS,
              results[list(RESULT_COLUMNS)].itertuples(index=False, name=None))
    cells = summarise(results)
    write_text(out / "results.md", markdown(cells))
    series = cells["dataset"] + " " + cells["backbone"] + " " + cells["strategy"]
    write_csv(out / "plots" / "accuracy_vs_shots.csv", ("shots", "accuracy", "series"),
              zip(cells["shots"], cells["mean"].round(4), series, strict=True))
    metrics = {"best": best_cells(cells), "runs": int(len(results)),
               "wall_seconds": round(wall_s, 1)}  # features and ingest included
    if scores is not None and len(scores):
        write_csv(out / "ranking.csv", RANK_COLUMNS,
                  scores[list(RANK_COLUMNS)].itertuples(index=False, name=None))
        metrics["ranking_check"] = ranking_check(results, scores)
    write_json(out / "metrics.json", metrics)
    return metrics
