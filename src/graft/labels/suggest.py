"""`graft suggest`: which unlabelled images to label next, with the reason for each.

Methods (`suggest.method`), chosen on the labeling benchmark (docs/labels.md):
- `kmeans`: TypiClust's loop (Hacohen et al. 2022) with the image nearest the centre instead of
  the most "typical" one (the two measured alike; this one needs no neighbour search). k-means on
  the cl2 embeddings of the labelled and unlabelled images together, K = labelled + n clusters
  (at most `max_clusters`); n times, take the group with the fewest labels (ties: the largest),
  skipping groups under `min_cluster` images (outliers), and suggest its unlabelled image nearest
  the centre. Typical, diverse images first: what pays when there are few labels.
- `margin`: once the model is decent, the images it is least sure about, spread out: the 10·n
  unlabelled images of smallest margin (best minus second-best probability of graft.labels.heads),
  k-means into n groups weighted by doubt, the image nearest each centre (Zhdanov 2019).
- `auto` (default): `kmeans` until every class has `cold_start` labels, then `margin`.
- `random`: the baseline of the benchmark.

Only unlabelled images (split `unlabeled`) are ever suggested: a labelled image, or a copy of
one, never is. Test images take no part: they are not training labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from graft.core.config import Params, SuggestParams
from graft.core.files import write_csv
from graft.core.layout import Layout
from graft.data.manifest import UNLABELED, class_names, encode_labels, origins
from graft.labels.heads import class_probabilities, margin
from graft.labels.space import project_space

COLUMNS = ("rank", "path", "score", "predicted", "reason")
POOL_SPLITS = ("train", "val", UNLABELED)  # the images a label can be added to, or came from
DOUBT_POOL = 10  # margin: the DOUBT_POOL·n most unsure images are spread into n groups


class SuggestError(ValueError):
    """Nothing to suggest from; the message names the file and what to do."""


@dataclass(frozen=True)
class Pick:
    """A suggested image: its row in the pool, its score (higher: label sooner) and why."""

    index: int
    score: float
    reason: str


def _kmeans(z: np.ndarray, k: int, seed: int, weight: np.ndarray | None = None) -> KMeans:
    with threadpool_limits(1):  # a few thousand rows: threads only spin on a shared CPU
        return KMeans(k, n_init=1, max_iter=100, random_state=seed).fit(z, sample_weight=weight)


def kmeans_picks(z: np.ndarray, labelled: np.ndarray, n: int, seed: int, max_clusters: int = 500,
                 min_cluster: int = 5) -> list[Pick]:
    """The `kmeans` method on the pool `z` (cl2 rows; `labelled` marks those with a label).
    Score: the share of the pool the pick's group holds."""
    k = max(1, min(int(labelled.sum()) + n, max_clusters, len(z)))
    km = _kmeans(z, k, seed)
    group, size = km.labels_, np.bincount(km.labels_, minlength=k)
    covered = np.bincount(group[labelled], minlength=k)
    taken = labelled.copy()
    picks = []
    for _ in range(min(n, int((~taken).sum()))):
        open_ = np.bincount(group[~taken], minlength=k) > 0
        big = open_ & (size >= min_cluster)
        options = np.flatnonzero(big if big.any() else open_)
        c = options[np.lexsort((-size[options], covered[options]))[0]]  # fewest labels, largest
        members = np.flatnonzero((group == c) & ~taken)
        i = int(members[np.argmin(((z[members] - km.cluster_centers_[c]) ** 2).sum(axis=1))])
        picks.append(Pick(i, round(float(size[c] / len(z)), 4), _group_reason(size[c], covered[c])))
        taken[i] = True
        covered[c] += 1
    return picks


def _group_reason(size: int, covered: int) -> str:
    if covered == 0:
        return f"most central image of a group of {size} similar images, none labelled yet"
    return (f"most central unlabelled image of a group of {size} similar images "
            f"({covered} labelled so far)")


def margin_picks(z: np.ndarray, labelled: np.ndarray, probs: np.ndarray, n: int, seed: int,
                 classes: list[str]) -> list[Pick]:
    """The `margin` method: the most unsure unlabelled images, spread out. Score: 1 − margin."""
    m = margin(probs)
    free = np.flatnonzero(~labelled)
    doubtful = free[np.argsort(m[free], kind="stable")[: DOUBT_POOL * n]]
    k = min(n, len(doubtful))
    km = _kmeans(z[doubtful], k, seed, weight=1.0 - m[doubtful] + 1e-6)
    chosen = []
    for c in range(k):
        members = doubtful[km.labels_ == c]
        if len(members):
            centre = km.cluster_centers_[c]
            best = members[np.argmin(((z[members] - centre) ** 2).sum(axis=1))]
            chosen.append((int(best), int(len(members))))
    picked = {i for i, _ in chosen}
    chosen += [(int(i), 1) for i in doubtful if int(i) not in picked][: n - len(chosen)]
    chosen.sort(key=lambda item: m[item[0]])  # the most unsure first
    return [Pick(i, round(float(1 - m[i]), 4), _doubt_reason(probs[i], m[i], group, classes))
            for i, group in chosen]


def _doubt_reason(p: np.ndarray, m: float, group: int, classes: list[str]) -> str:
    first, second = np.argsort(-p)[:2]
    spread = f"; the most central of {group} such images" if group > 1 else ""
    return (f"among the images the model is least sure of: {classes[first]!r} or "
            f"{classes[second]!r} (margin {m:.2f}){spread}")


def random_picks(labelled: np.ndarray, n: int, seed: int) -> list[Pick]:
    """n unlabelled rows drawn at random (the benchmark's baseline)."""
    free = np.flatnonzero(~labelled)
    drawn = np.random.default_rng(seed).choice(free, min(n, len(free)), replace=False)
    return [Pick(int(i), 0.0, "drawn at random") for i in drawn]


def resolve_method(method: str, counts: np.ndarray, cold_start: int) -> str:
    """`auto` → margin once every class has `cold_start` labels, else kmeans; margin needs two
    labelled classes."""
    warm = len(counts) > 1 and counts.min() >= cold_start
    if method == "auto":
        return "margin" if warm else "kmeans"
    if method == "margin" and (counts > 0).sum() < 2:
        return "kmeans"
    return method


def choose(z: np.ndarray, labelled: np.ndarray, y: np.ndarray, classes: list[str], n: int,
           p: SuggestParams) -> tuple[str, list[Pick], np.ndarray]:
    """(method used, picks, class probabilities of every pool row) for the pool `z` whose rows
    `labelled` carry the class indices `y` (in row order)."""
    counts = np.bincount(y, minlength=len(classes))
    probs = class_probabilities(z[labelled], y, z, len(classes), p.cold_start)
    method = resolve_method(p.method, counts, p.cold_start)
    if method == "random":
        return method, random_picks(labelled, n, p.seed), probs
    if method == "margin":
        return method, margin_picks(z, labelled, probs, n, p.seed, classes), probs
    picks = kmeans_picks(z, labelled, n, p.seed, p.max_clusters, p.min_cluster)
    return method, picks, probs


def suggest_for_project(params: Params, layout: Layout, n: int | None = None
                        ) -> tuple[str, pd.DataFrame]:
    """Rank the project's unlabelled images (`n`, default suggest.n); write reports/suggest.csv;
    return (method used, the table)."""
    p = params.suggest
    space = project_space(params, layout)
    rows = space.rows
    pool = rows["split"].isin(POOL_SPLITS).to_numpy()
    labelled_sha = set(rows.loc[rows["split"].isin(["train", "val"]), "sha256"])
    copy = (rows["split"] == UNLABELED).to_numpy() & rows["sha256"].isin(labelled_sha).to_numpy()
    index = np.flatnonzero(pool & ~copy)  # a copy of a labelled image is never suggested
    sub = rows.iloc[index]
    labelled = (sub["split"] != UNLABELED).to_numpy()
    if labelled.all():
        raise SuggestError(f"{layout.manifest}: no unlabelled images to suggest; set "
                           "ingest.unlabeled_path to a folder of images and run the ingest and "
                           "features stages (dvc repro features)")
    classes = class_names(rows)
    y = encode_labels(sub.loc[labelled, "label"], classes, layout.manifest, "validation")
    method, picks, probs = choose(space.z[index], labelled, y, classes, n or p.n, p)
    paths = origins(sub.iloc[[k.index for k in picks]], layout.manifest)
    has_labels = bool(labelled.any())
    table = pd.DataFrame([[rank, path, k.score, classes[int(probs[k.index].argmax())]
                           if has_labels else "", k.reason]
                          for rank, (k, path) in enumerate(zip(picks, paths, strict=True), 1)],
                         columns=list(COLUMNS))
    write_csv(layout.suggestions, COLUMNS, table.itertuples(index=False))
    return method, table
