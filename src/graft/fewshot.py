"""The few-shot benchmark: accuracy against shots per class, per dataset × backbone × strategy.

For each dataset, episode and shots value, the ordinary stages run in one work folder: ingest
(seed = `seed` + episode, `shots` training images per class, no validation images: the labelled
budget is exactly `shots` per class, so the strategies choose their settings by k-fold CV on the
training images, or use their documented defaults at 1 shot), features for each backbone (the
sha-keyed store in the work folder is shared by every cell, so each image is embedded once per
backbone), then finetune for each strategy. The test split is scored from the cached test
embeddings through the saved checkpoint's head (the head maps pooled backbone features to logits;
the network strategies change the backbone, so their test images go through the whole saved
network; the `ensemble` strategy averages linear_probe/prototype/svm heads, whichever of them
`strategies` lists, over all of `backbones`, and is reported as backbone "ensemble"). Each cell
also scores the raw-pixel logistic regression (graft.baselines), so transfer
is compared with learning from scratch on the same images.

Before training, each backbone's training features are scored with graft.rank (LogME,
H-score), as `features.backbone: auto` and `graft rank` do; `ranking_check` then says how often
each score's top backbone was the one that reached the best accuracy, per feature strategy.

Outputs (atomic): results.csv (one row per run), results.md (mean ± 95% t-interval over the
episodes per cell), plots/accuracy_vs_shots.csv (long format for `dvc plots`), ranking.csv (the
scores per episode) and metrics.json (the best cell per dataset and shots, the ranking check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from graft import features, finetune, ingest, rank
from graft.baselines import load_split, pixels_logreg
from graft.checkpoint import load_checkpoint
from graft.config import ConfigError, Params, build_section, params_from_dict
from graft.files import write_csv, write_json, write_text
from graft.heads import head_logits
from graft.inference import pick_device, run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, class_names, read_manifest

BASELINE = ("pixels", "pixels_logreg")  # (backbone, strategy) columns of the baseline rows
RESULT_COLUMNS = ("dataset", "backbone", "strategy", "shots", "episode", "accuracy", "seconds")
CELL = ["dataset", "backbone", "strategy", "shots"]
RANK_COLUMNS = ("dataset", "shots", "episode", "backbone", "logme", "h_score")
EPISODE = ["dataset", "shots", "episode"]
ENSEMBLE = "ensemble"  # the backbone column of the ensemble rows (all of `backbones`)


@dataclass(frozen=True)
class FewshotParams:
    datasets: list[Literal["fashion-mnist", "digits"]] = field(
        default_factory=lambda: ["fashion-mnist", "digits"])
    fashion_mnist_path: str = "/usr/share/datasets/fashion-mnist"  # idx files; relative: to workdir
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 20])  # training images per class
    strategies: list[Literal["linear_probe", "prototype", "svm", "finetune", "lp_ft",
                             "ensemble", "auto"]] = field(
        default_factory=lambda: ["linear_probe", "prototype", "svm"])
    backbones: list[str] = field(default_factory=lambda: [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    feature_norm: Literal["none", "center", "l2", "center_l2"] = "none"  # feature strategies
    episodes: int = 5  # episode e draws its images with ingest seed `seed` + e
    test_size: int | None = 2000  # stratified cap on test images (Fashion-MNIST official test)
    test_fraction: float = 0.2  # per class held out as test when the source has no test set
    image_size: int = 224  # backbone input, pixels
    views: int = 0  # augmented views per training image for the feature strategies (graft.views)
    baseline_image_size: int = 32  # raw-pixel logistic regression input, pixels
    seed: int = 0
    workdir: str = "work"  # ingest/features/models of the runs; relative to the params file


def load_fewshot_params(path: Path | str) -> FewshotParams:
    """The `fewshot` section of a params file, with graft.config's strict checks."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"fewshot"}:
        raise ConfigError(f"{path}: expected exactly one section, fewshot")
    p = build_section(FewshotParams, raw["fewshot"] or {}, f"{path}: fewshot")
    rules = [("shots", bool(p.shots) and min(p.shots) >= 1, "a non-empty list of integers ≥ 1"),
             ("episodes", p.episodes >= 1, "≥ 1"),
             ("datasets", bool(p.datasets), "non-empty"),
             ("strategies", bool(p.strategies), "non-empty"),
             ("backbones", bool(p.backbones), "non-empty")]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{path}: fewshot.{key} = {getattr(p, key)!r} must be {rule}")
    return p


def cell_params(p: FewshotParams, dataset: str, episode: int, shots: int, backbone: str,
                strategy: str) -> Params:
    """The pipeline Params of one run: ingest overrides, backbone, strategy, seeds."""
    seed = p.seed + episode
    members = [s for s in p.strategies if s in finetune.FEATURE_STRATEGIES] or ["linear_probe"]
    return params_from_dict({
        "ingest": {"source": dataset, "path": p.fashion_mnist_path, "shots_per_class": shots,
                   "val_per_class": 0, "test_size": p.test_size,
                   "test_fraction": p.test_fraction, "seed": seed},
        "features": {"backbone": backbone, "image_size": p.image_size, "views": p.views},
        "finetune": {"strategy": strategy, "seed": seed,
                     "feature_norm": "none" if strategy in finetune.NETWORK else p.feature_norm,
                     "ensemble_backbones": p.backbones, "ensemble_strategies": members},
        "evaluate": {"baseline_image_size": p.baseline_image_size, "seed": seed},
    }, source=f"fewshot {dataset} episode {episode} shots {shots}")


def run(p: FewshotParams, out: Path, log: bool = True) -> dict:
    """Every run of the benchmark; writes the outputs under `out` and returns the metrics."""
    started = time.perf_counter()
    layout = Layout(out / p.workdir)
    rows: list[list] = []
    scores: list[list] = []  # graft.rank's scores of each backbone, per episode
    for dataset in p.datasets:
        for episode in range(p.episodes):
            for shots in sorted(p.shots):
                base = cell_params(p, dataset, episode, shots, p.backbones[0], p.strategies[0])
                ingest.run(base, layout)
                df = read_manifest(layout.manifest)
                test = df.loc[df["split"] == "test"].reset_index(drop=True)
                y_test = _labels(test, class_names(df))
                rows.append([dataset, *BASELINE, shots, episode,
                             *_baseline(base, layout, df, y_test)])
                runs = [(b, s) for b in p.backbones for s in p.strategies if s != "ensemble"]
                if "ensemble" in p.strategies:  # after every backbone's features exist
                    runs.append((ENSEMBLE, "ensemble"))
                embedded = None
                for backbone, strategy in runs:
                    name = p.backbones[0] if backbone == ENSEMBLE else backbone
                    params = cell_params(p, dataset, episode, shots, name, strategy)
                    if backbone not in (ENSEMBLE, embedded):
                        features.run(params, layout)
                        embedded = backbone
                        train, y_train = rank.training_rows(df, layout.manifest)
                        scored = rank.score(features.load_features(layout, params, train),
                                            y_train)
                        scores.append([dataset, shots, episode, backbone, scored["logme"],
                                       scored["h_score"]])
                    acc, secs = _score(params, layout, test, y_test)
                    rows.append([dataset, backbone, strategy, shots, episode, acc, secs])
                    if log:
                        print(f"{dataset} episode {episode} {shots}-shot {backbone} "
                              f"{strategy}: {acc:.4f} ({secs:.1f} s)", flush=True)
    return write_outputs(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), out,
                         time.perf_counter() - started,
                         pd.DataFrame(scores, columns=list(RANK_COLUMNS)))


def _labels(rows: pd.DataFrame, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return rows["label"].map(index).to_numpy(np.int64)


def _score(params: Params, layout: Layout, test: pd.DataFrame, y_test: np.ndarray
           ) -> tuple[float, float]:
    """Fit the strategy (finetune stage), then its test accuracy and the seconds it took."""
    t0 = time.perf_counter()
    finetune.run(params, layout)
    model, meta = load_checkpoint(layout.model)
    if params.finetune.strategy == "ensemble":  # each member's head on its backbone's cache
        logits = model.head_logits({b: features.load_features(
            layout, features.with_backbone(params, b), test)
            for b in params.finetune.ensemble_backbones})
    elif meta["info"]["fitted_strategy"] in finetune.NETWORK:  # a trained backbone: the network
        logits = run_model(model, absolute_paths(test, layout.manifest), meta["preprocessing"],
                           params.features.batch_size, pick_device())
    else:  # the backbone is the pretrained one: its cached test embeddings through the head
        logits = head_logits(model.classifier, features.load_features(layout, params, test))
    accuracy = float((np.asarray(logits).argmax(1) == y_test).mean())
    return accuracy, round(time.perf_counter() - t0, 2)


def _baseline(params: Params, layout: Layout, df: pd.DataFrame, y_test: np.ndarray
              ) -> tuple[float, float]:
    """Raw-pixel logistic regression on the same training images (no val: C = 1.0)."""
    t0 = time.perf_counter()
    classes, size = class_names(df), params.evaluate.baseline_image_size
    split = {s: df.loc[df["split"] == s] for s in ("train", "val", "test")}
    data = {s: load_split(absolute_paths(rows, layout.manifest), _labels(rows, classes), size)
            for s, rows in split.items()}
    result = pixels_logreg(data["train"], data["val"], data["test"], len(classes),
                           params.evaluate.logreg_c_grid, params.evaluate.seed)
    accuracy = float((result.proba.argmax(1) == y_test).mean())
    return accuracy, round(time.perf_counter() - t0, 2)


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
    runs = results[results["strategy"].isin(finetune.FEATURE_STRATEGIES)
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
