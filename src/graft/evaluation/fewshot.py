"""The few-shot benchmark: accuracy against shots per class, per dataset × backbone × strategy.

For each dataset, episode and shots value, the pipeline's own libraries run in one work folder:
the ingest's `prepare` (seed = `seed` + episode, `shots` training images per class, no validation
images: the labelled budget is exactly `shots` per class, so the strategies choose their settings
by k-fold CV on the training images, or use their documented defaults at 1 shot), the embedding
store for each backbone (the sha-keyed store in the work folder is shared by every cell, so each
image is embedded once per backbone), then each strategy from the registry (graft.strategies),
fitted as the finetune stage fits it. The test split is scored from the cached test embeddings
through the fitted head (the head maps pooled backbone features to logits;
the network strategies change the backbone, so their test images go through the whole saved
network; the `ensemble` strategy averages linear_probe/prototype/svm heads, whichever of them
`strategies` lists, over all of `backbones`, and is reported as backbone "ensemble"). Each cell
also scores the raw-pixel logistic regression (graft.evaluation.baselines), so transfer
is compared with learning from scratch on the same images.

Before training, each backbone's training features are scored with
graft.evaluation.transferability (LogME,
H-score), as `features.backbone: auto` and `graft rank` do; `ranking_check` then says how often
each score's top backbone was the one that reached the best accuracy, per feature strategy.

Outputs (atomic, written by graft.evaluation.fewshot_report): results.csv (one row per run),
results.md (mean ± 95% t-interval over the episodes per cell), plots/accuracy_vs_shots.csv (long
format for `dvc plots`), ranking.csv (the scores per episode) and metrics.json (the best cell per
dataset and shots, the ranking check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from graft.core.config import (
    ConfigError,
    FeatureNorm,
    Params,
    build_section,
    param,
    params_from_dict,
    read_yaml,
)
from graft.core.layout import Layout
from graft.core.progress import format_seconds, say
from graft.data.manifest import absolute_paths, class_names, encode_labels
from graft.data.prepare import prepare
from graft.embeddings.embed import embed_missing
from graft.embeddings.store import load_features, with_backbone
from graft.evaluation.baselines import load_split, pixels_logreg
from graft.evaluation.fewshot_report import (
    BASELINE,
    ENSEMBLE,
    RANK_COLUMNS,
    RESULT_COLUMNS,
    write_outputs,
)
from graft.evaluation.transferability import score, training_rows
from graft.models.backbones import check_backbone
from graft.models.heads import head_logits
from graft.models.inference import run_model
from graft.strategies import get_strategy, strategy_kind, strategy_names
from graft.strategies.base import load_inputs


@dataclass(frozen=True)
class FewshotParams:
    datasets: list[Literal["fashion-mnist", "digits"]] = param(["fashion-mnist", "digits"],
                                                               nonempty=True)
    # idx files; relative: to workdir
    fashion_mnist_path: str = param("/usr/share/datasets/fashion-mnist", nonempty=True)
    shots: list[int] = param([1, 5, 10, 20], ge=1, nonempty=True)  # training images per class
    strategies: list[str] = param(["linear_probe", "prototype", "svm"], nonempty=True)
    backbones: list[str] = param(
        ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], nonempty=True)
    feature_norm: FeatureNorm = "none"  # feature strategies
    episodes: int = param(5, ge=1)  # episode e draws its images with ingest seed `seed` + e
    test_size: int | None = param(2000, ge=1)  # stratified cap on test images
    test_fraction: float = param(0.2, ge=0, lt=1)  # per class held out without a test set
    image_size: int = param(224, ge=16, le=2048)  # backbone input, pixels
    views: int = param(0, ge=0, le=100)  # augmented views per training image (features.views)
    baseline_image_size: int = param(32, ge=8, le=512)  # raw-pixel logistic regression input
    seed: int = param(0, ge=0)
    workdir: str = param("work", nonempty=True)  # the runs' files; relative to the params file
    # tcp://HOST:PORT: each (dataset, episode) runs as a Prefect task on that Dask scheduler's
    # workers, in its own folder workdir/<dataset>-episode<e>; null: here, one after another
    cluster: str | None = None


def load_fewshot_params(path: Path | str) -> FewshotParams:
    """The `fewshot` section of a params file, with graft.core.config's strict checks, and
    every strategy and backbone known to its registry."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or set(raw) != {"fewshot"}:
        raise ConfigError(f"{path}: expected exactly one section, fewshot")
    p = build_section(FewshotParams, raw["fewshot"] or {}, f"{path}: fewshot")
    known = strategy_names()
    for name in p.strategies:
        if name not in known:
            raise ConfigError(f"{path}: fewshot.strategies: {name!r} is not one of "
                              f"{', '.join(known)}")
    for backbone in p.backbones:
        check_backbone(backbone, "fewshot.backbones", str(path))
        for name in p.strategies:
            reason = get_strategy(name).unsupported(backbone)
            if reason:
                raise ConfigError(f"{path}: fewshot.strategies: {name} {reason}")
    if p.cluster is not None and not p.cluster.startswith(("tcp://", "tls://")):
        raise ConfigError(f"{path}: fewshot.cluster = {p.cluster!r} must be a Dask scheduler "
                          "address, tcp://HOST:PORT (or tls://), or null to run here")
    return p


def cell_params(p: FewshotParams, dataset: str, episode: int, shots: int, backbone: str,
                strategy: str) -> Params:
    """The pipeline Params of one run: ingest overrides, backbone, strategy, seeds."""
    seed = p.seed + episode
    members = [s for s in p.strategies if strategy_kind(s) == "features"] or ["linear_probe"]
    network = strategy_kind(strategy) == "network"
    return params_from_dict({
        "ingest": {"source": dataset, "path": p.fashion_mnist_path, "shots_per_class": shots,
                   "val_per_class": 0, "test_size": p.test_size,
                   "test_fraction": p.test_fraction, "seed": seed},
        "features": {"backbone": backbone, "image_size": p.image_size, "views": p.views},
        "finetune": {"strategy": strategy, "seed": seed,
                     "feature_norm": "none" if network else p.feature_norm,
                     "ensemble_backbones": p.backbones, "ensemble_strategies": members},
        "evaluate": {"baseline_image_size": p.baseline_image_size, "seed": seed},
    }, source=f"fewshot {dataset} episode {episode} shots {shots}")


def run(p: FewshotParams, out: Path, log: bool = True) -> dict:
    """Every run of the benchmark; writes the outputs under `out` and returns the metrics.

    With `cluster`, each (dataset, episode) runs on the Dask cluster as the Prefect task
    `fewshot-episode` (graft.embeddings.cluster.map_on_cluster) in its own work folder, with its
    own embedding store; the workers need the environment, `out` and the datasets at the same
    absolute paths (docs/scaling.md)."""
    started = time.perf_counter()
    per_cell = 1 + len([s for s in p.strategies if s != "ensemble"]) * len(p.backbones) + (
        "ensemble" in p.strategies)  # the baseline row, then one per run
    total = len(p.datasets) * p.episodes * len(p.shots) * per_cell
    units = [(dataset, episode) for dataset in p.datasets for episode in range(p.episodes)]
    if p.cluster is None:
        layout = Layout(out / p.workdir)  # one folder: its store is shared by every episode
        rows: list[list] = []

        def note(row: list) -> None:
            rows.append(row)
            if log and row[1] != BASELINE[0]:
                dataset, backbone, strategy, shots, episode, acc, secs = row
                say(f"fewshot: {len(rows)}/{total} {dataset} episode {episode} {shots}-shot "
                    f"{backbone} {strategy}: {acc:.4f} ({secs:.1f} s, "
                    f"{format_seconds(time.perf_counter() - started)} so far)")

        parts = [_episode(p, dataset, episode, layout, note) for dataset, episode in units]
    else:
        parts = _on_cluster(p, out, units)
        if log:
            say(f"fewshot: {total} runs in {len(units)} tasks on {p.cluster} "
                f"({format_seconds(time.perf_counter() - started)})")
    rows = [row for part_rows, _ in parts for row in part_rows]
    scores = [row for _, part_scores in parts for row in part_scores]
    return write_outputs(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), out,
                         time.perf_counter() - started,
                         pd.DataFrame(scores, columns=list(RANK_COLUMNS)))


def _episode(p: FewshotParams, dataset: str, episode: int, layout: Layout,
             note=None) -> tuple[list[list], list[list]]:
    """(result rows, transferability rows) of one dataset's episode, every shots value, run in
    `layout`; `note(row)` hears of each result row as it comes."""
    rows: list[list] = []
    scores: list[list] = []  # transferability scores of each backbone
    for shots in sorted(p.shots):
        base = cell_params(p, dataset, episode, shots, p.backbones[0], p.strategies[0])
        df = prepare(base.ingest, layout).manifest
        test = df.loc[df["split"] == "test"].reset_index(drop=True)
        y_test = encode_labels(test["label"], class_names(df), layout.manifest, "test")
        rows.append([dataset, *BASELINE, shots, episode, *_baseline(base, layout, df, y_test)])
        if note:
            note(rows[-1])
        runs = [(b, s) for b in p.backbones for s in p.strategies if s != "ensemble"]
        if "ensemble" in p.strategies:  # after every backbone's features exist
            runs.append((ENSEMBLE, "ensemble"))
        embedded = None
        for backbone, strategy in runs:
            name = p.backbones[0] if backbone == ENSEMBLE else backbone
            params = cell_params(p, dataset, episode, shots, name, strategy)
            if backbone not in (ENSEMBLE, embedded):
                embed_missing(layout, params, df)
                embedded = backbone
                train, y_train = training_rows(df, layout.manifest)
                scored = score(load_features(layout, params, train), y_train)
                scores.append([dataset, shots, episode, backbone, scored["logme"],
                               scored["h_score"]])
            acc, secs = _score(params, layout, test, y_test)
            rows.append([dataset, backbone, strategy, shots, episode, acc, secs])
            if note:
                note(rows[-1])
    return rows, scores


def _on_cluster(p: FewshotParams, out: Path, units: list[tuple[str, int]]
                ) -> list[tuple[list[list], list[list]]]:
    """`_episode` of every unit, each in workdir/<dataset>-episode<e>, on the Dask cluster."""
    from graft.embeddings.cluster import map_on_cluster  # imports Prefect

    work = (out / p.workdir).resolve()  # the workers' cwd is not ours
    data = work / p.fashion_mnist_path  # relative to workdir, as in a local run
    p = replace(p, fashion_mnist_path=str(data))
    calls = [(p, dataset, episode, Layout(work / f"{dataset}-episode{episode}"))
             for dataset, episode in units]
    return map_on_cluster(p.cluster, "fewshot", "fewshot-episode", _episode, calls)


def _score(params: Params, layout: Layout, test: pd.DataFrame, y_test: np.ndarray
           ) -> tuple[float, float]:
    """Fit the strategy as the finetune stage does, then its test accuracy and the seconds it
    took."""
    t0 = time.perf_counter()
    p, inputs = params.finetune, load_inputs(params, layout)
    fit = get_strategy(p.strategy).fit(p, inputs)
    if fit.network:  # the ensemble: each member's head on its backbone's cache
        logits = fit.model.head_logits({b: load_features(layout, with_backbone(params, b), test)
                                        for b in p.ensemble_backbones})
    elif strategy_kind(fit.fitted.strategy) == "network":  # a trained backbone: the network
        logits = run_model(fit.model, absolute_paths(test, layout.manifest), inputs.pre,
                           params.features.batch_size, inputs.device)
    else:  # the backbone is the pretrained one: its cached test embeddings through the head
        logits = head_logits(fit.model.classifier, load_features(layout, params, test))
    accuracy = float((np.asarray(logits).argmax(1) == y_test).mean())
    return accuracy, round(time.perf_counter() - t0, 2)


def _baseline(params: Params, layout: Layout, df: pd.DataFrame, y_test: np.ndarray
              ) -> tuple[float, float]:
    """Raw-pixel logistic regression on the same training images (no val: C = 1.0)."""
    t0 = time.perf_counter()
    classes, size = class_names(df), params.evaluate.baseline_image_size
    split = {s: df.loc[df["split"] == s] for s in ("train", "val", "test")}
    data = {s: load_split(absolute_paths(rows, layout.manifest),
                          encode_labels(rows["label"], classes, layout.manifest, s), size)
            for s, rows in split.items()}
    result = pixels_logreg(data["train"], data["val"], data["test"], len(classes),
                           params.evaluate.logreg_c_grid, params.evaluate.seed)
    accuracy = float((result.proba.argmax(1) == y_test).mean())
    return accuracy, round(time.perf_counter() - t0, 2)
