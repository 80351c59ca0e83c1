"""The labeling benchmark (pipelines/labeling-benchmark, `graft labelbench`): does `graft suggest`
beat random picks, and does the audit find planted wrong labels and planted near-copies?

Per dataset, one ingest (graft.data.prepare: `pool_size` training images, class-balanced, and the
test split) and one embedding run (the sha-keyed store in `workdir`, reused by every seed and by
a rerun); everything else is in memory on the cl2 embeddings (graft.labels.space), centred on the
mean of all the dataset's images as the audit stage and `graft suggest` centre them.

- `suggest`: a simulated user starts from `start` (0 labels, or 1 random image per class), takes
  the method's `step` suggestions from the unlabelled pool (graft.labels.suggest.choose, exactly
  what `graft suggest` runs), reveals their true labels, refits graft.labels.heads' head, and
  scores it on the test split at each of `budgets` labels. Methods: suggest.method names
  (`auto`, `kmeans`, `margin`, `random`).
- `label_errors`: `audit_per_class` pool images per class labelled, `flip_fraction` of them given
  a random wrong class; recall of the flipped ones in the top k and top 2k of the audit's ranking
  (graft.labels.audit.loo_margin), k = the number flipped.
- `near_duplicates`: `dup_train` pool images as the training split, the test split with
  `planted` of its images replaced by copies of training images, each resized to 90% or 120%
  (nearest, bilinear, bicubic or Lanczos) and saved as JPEG of quality 70–95; the share found
  by graft.labels.duplicates (flagged with its own source), and the other test images flagged.

Outputs beside the params file: results.csv (one row per measurement), results.md (means ± 95%
t-interval over the seeds, gains vs random paired by seed) and metrics.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from graft.core.config import (
    AuditParams,
    ConfigError,
    SuggestParams,
    build_section,
    param,
    params_from_dict,
    read_yaml,
)
from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, class_names, encode_labels
from graft.data.prepare import prepare
from graft.embeddings.embed import embed_missing
from graft.embeddings.store import load_features
from graft.labels import audit, duplicates
from graft.labels.bench_report import write_outputs
from graft.labels.heads import class_probabilities
from graft.labels.space import Space, centred_l2
from graft.labels.suggest import choose, random_picks

RESAMPLING = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
              Image.Resampling.LANCZOS)
COLUMNS = ("benchmark", "dataset", "method", "labels", "seed", "metric", "value")


@dataclass(frozen=True)
class LabelBenchParams:
    datasets: list[Literal["fashion-mnist", "digits"]] = param(["fashion-mnist", "digits"],
                                                               nonempty=True)
    fashion_mnist_path: str = param("/usr/share/datasets/fashion-mnist", nonempty=True)
    backbone: str = "efficientnet_lite0"
    image_size: int = param(224, ge=16, le=2048)
    pool_size: int = param(2000, ge=10)  # unlabelled training images, class-balanced
    test_size: int | None = param(2000, ge=1)  # stratified cap on test images
    test_fraction: float = param(0.2, ge=0, lt=1)  # held out per class without a test split
    seeds: int = param(5, ge=1)  # seed s: k-means, random draws, flips, planted copies
    seed: int = param(0, ge=0)  # the ingest's seed and the first seed
    benchmarks: list[Literal["suggest", "label_errors", "near_duplicates"]] = param(
        ["suggest", "label_errors", "near_duplicates"], nonempty=True)
    methods: list[Literal["auto", "kmeans", "margin", "random"]] = param(
        ["kmeans", "auto", "random"], nonempty=True)
    start: Literal["zero", "one"] = "zero"  # labels before the first round: none, one per class
    step: int = param(10, ge=1)  # suggestions taken per round
    budgets: list[int] = param([10, 20, 30, 50, 100], ge=1, nonempty=True)  # labels scored
    audit_per_class: int = param(20, ge=2)
    flip_fraction: float = param(0.1, gt=0, lt=1)
    dup_train: int = param(1000, ge=10)
    planted: int = param(20, ge=1)
    workdir: str = param("work", nonempty=True)  # relative to the params file


def load_labelbench_params(path: Path | str) -> LabelBenchParams:
    """The `labelbench` section of a params file, with graft.core.config's strict checks."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or set(raw) != {"labelbench"}:
        raise ConfigError(f"{path}: expected exactly one section, labelbench")
    return build_section(LabelBenchParams, raw["labelbench"] or {}, f"{path}: labelbench")


@dataclass(frozen=True)
class Dataset:
    """One dataset's images: rows (manifest), cl2 embeddings `z`, class indices `y`."""

    name: str
    layout: Layout
    rows: pd.DataFrame
    z: np.ndarray
    y: np.ndarray
    classes: list[str]
    pool: np.ndarray  # row numbers of the training pool
    test: np.ndarray  # row numbers of the test split


def load_dataset(p: LabelBenchParams, name: str, out: Path) -> Dataset:
    """Ingest `name` into workdir/<name> and embed it (cached): the pool and the test split."""
    n_classes = 10  # both datasets have ten classes
    params = params_from_dict({
        "ingest": {"source": name, "path": p.fashion_mnist_path, "seed": p.seed,
                   "shots_per_class": max(1, p.pool_size // n_classes), "val_per_class": 0,
                   "test_size": p.test_size, "test_fraction": p.test_fraction},
        "features": {"backbone": p.backbone, "image_size": p.image_size},
    }, source=f"labelbench {name}")
    layout = Layout(out / p.workdir / name)
    rows = prepare(params.ingest, layout).manifest.reset_index(drop=True)
    embed_missing(layout, params, rows)
    feats = load_features(layout, params, rows)
    classes = class_names(rows)
    y = encode_labels(rows["label"], classes, layout.manifest, "all")
    split = rows["split"].to_numpy()
    return Dataset(name, layout, rows, centred_l2(feats, feats.mean(axis=0)), y, classes,
                   np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))


def simulate(d: Dataset, method: str, p: LabelBenchParams, seed: int) -> dict[int, float]:
    """Test accuracy at each budget for a user who labels `method`'s picks `step` at a time."""
    z, y = d.z[d.pool], d.y[d.pool]
    rng = np.random.default_rng(seed)
    labelled = np.zeros(len(z), bool)
    if p.start == "one":
        for k in np.unique(y):
            labelled[rng.choice(np.flatnonzero(y == k))] = True
    sp = SuggestParams(method="kmeans" if method == "random" else method, seed=seed)
    curve, top = {}, min(max(p.budgets), len(z))
    while labelled.sum() < top:
        n = min(p.step, top - int(labelled.sum()))
        if method == "random":
            picks = random_picks(labelled, n, int(rng.integers(2**31)))
        else:
            picks = choose(z, labelled, y[labelled], d.classes, n, sp)[1]
        labelled[[k.index for k in picks]] = True
        count = int(labelled.sum())
        for budget in p.budgets:
            if budget not in curve and count >= budget:
                probs = class_probabilities(z[labelled], y[labelled], d.z[d.test],
                                            len(d.classes), sp.cold_start)
                curve[budget] = float((probs.argmax(axis=1) == d.y[d.test]).mean())
    return curve


def label_error_recall(d: Dataset, p: LabelBenchParams, seed: int) -> dict[str, float]:
    """Top-k and top-2k recall of the flipped labels among `audit_per_class` labels per class."""
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(d.pool[d.y[d.pool] == k],
                                        min(p.audit_per_class, int((d.y[d.pool] == k).sum())),
                                        replace=False) for k in range(len(d.classes))])
    y = d.y[chosen].copy()
    flipped = rng.choice(len(y), max(1, round(p.flip_fraction * len(y))), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, len(d.classes), len(flipped))) % len(d.classes)
    order = audit.ranking(d.z[chosen], y, len(d.classes))
    k = len(flipped)
    return {"top_k": float(np.isin(order[:k], flipped).mean()),
            "top_2k": float(np.isin(flipped, order[:2 * k]).mean()), "k": float(k)}


def planted_copies(d: Dataset, p: LabelBenchParams, seed: int) -> dict[str, float]:
    """Share of `planted` re-encoded copies of training images found in the test split, and
    the number of other test images flagged."""
    rng = np.random.default_rng(seed)
    train = rng.choice(d.pool, min(p.dup_train, len(d.pool)), replace=False)
    sources = rng.choice(train, min(p.planted, len(train)), replace=False)
    replaced = rng.choice(d.test, len(sources), replace=False)
    files = absolute_paths(d.rows, d.layout.manifest)
    folder = d.layout.prepared / "planted"
    folder.mkdir(exist_ok=True)
    copies = []
    for i, src in enumerate(sources):
        out = folder / f"seed{seed}_{i}.jpg"
        duplicates.reencode(Image.open(files[src]), out, float(rng.choice([0.9, 1.2])),
                            int(rng.integers(70, 96)), RESAMPLING[rng.integers(len(RESAMPLING))])
        size = Image.open(out).size
        copies.append({**d.rows.iloc[src].to_dict(), "path": f"planted/{out.name}",
                       "split": "test", "sha256": sha256_file(out), "width": size[0],
                       "height": size[1]})
    keep = np.setdiff1d(d.test, replaced)
    rows = pd.concat([d.rows.iloc[train].assign(split="train"), d.rows.iloc[keep],
                      pd.DataFrame(copies)], ignore_index=True)
    params = params_from_dict({"features": {"backbone": p.backbone, "image_size": p.image_size}})
    embed_missing(d.layout, params, rows)
    feats = load_features(d.layout, params, rows)
    space = Space(rows, centred_l2(feats, feats.mean(axis=0)))
    paths = [str(f) for f in absolute_paths(rows, d.layout.manifest)]
    pairs, info = duplicates.near_duplicates(space, paths, [Path(f) for f in paths],
                                          replace(AuditParams(), seed=seed),
                                          params.validate.max_pixels)
    planted = {paths[len(rows) - len(copies) + i]: str(files[s]) for i, s in enumerate(sources)}
    test_pairs = pairs.loc[pairs["split_a"] == "test"]
    found = sum(planted.get(a) == b for a, b in zip(test_pairs["path_a"], test_pairs["path_b"],
                                                    strict=True))
    others = test_pairs.loc[~test_pairs["path_a"].isin(list(planted)), "path_a"].nunique()
    return {"found": found / len(planted), "other_flagged": float(others),
            "n_test": float(len(keep) + len(copies)),
            "too_small": float(info["too_small"])}  # under audit.min_side: hashes only


def run(p: LabelBenchParams, out: Path, log: bool = True) -> dict:
    """Every measurement; writes results.csv, results.md and metrics.json under `out`."""
    started = time.perf_counter()
    rows: list[list] = []
    for name in p.datasets:
        d = load_dataset(p, name, out)
        for seed in range(p.seed, p.seed + p.seeds):
            if "suggest" in p.benchmarks:
                for method in p.methods:
                    for budget, acc in simulate(d, method, p, seed).items():
                        rows.append(["suggest", name, method, budget, seed, "accuracy", acc])
            if "label_errors" in p.benchmarks:
                rows += [["label_errors", name, "loo_margin", len(d.classes) * p.audit_per_class,
                          seed, metric, value]
                         for metric, value in label_error_recall(d, p, seed).items()]
            if "near_duplicates" in p.benchmarks:
                rows += [["near_duplicates", name, "thumbnail+embedding", p.dup_train, seed,
                          metric, value]
                         for metric, value in planted_copies(d, p, seed).items()]
            if log:
                print(f"{name} seed {seed}: done ({time.perf_counter() - started:.0f} s)",
                      flush=True)
    return write_outputs(pd.DataFrame(rows, columns=list(COLUMNS)), out, p,
                         time.perf_counter() - started)
