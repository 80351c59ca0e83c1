"""Suspected label errors: each labelled image against the means of the classes, itself left out.

Score (leave-one-out prototype cosine margin on cl2 features): cos(image, mean of its own class
without it) − max over other classes of cos(image, that class's mean). Negative: the image sits
closer to another class's images than to its own, and that class is the `suggested` label. Most
negative first. It has no parameter and fits nothing, so an image's own (possibly wrong) label
cannot pull its score up the way it does in a model trained on it: on Fashion-MNIST with 20
labels per class and 10% flipped, it puts 81% of the flips in the top k (k = the number flipped)
where an out-of-fold logistic-regression margin puts 58% (docs/labels.md).

Every labelled split is audited (train, val and test: a wrong test label corrupts the score), and
the class means use all of them. A class with a single image has no mean without it: not scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from graft.data.manifest import labelled
from graft.labels.space import Space

COLUMNS = ("path", "label", "suggested", "score")


def loo_margin(z: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, nearest other class) per row of the unit rows `z` with class indices `y`; the
    score is NaN where the row's class has no other image. One (N×D)·(D×C) product: the own
    class's mean without row i is S_y − z_i, and ‖S_y − z_i‖² = ‖S_y‖² − 2 z_i·S_y + 1."""
    sums = np.zeros((n_classes, z.shape[1]))
    np.add.at(sums, y, z)
    dots = z @ sums.T  # z_i · S_k
    norms = np.linalg.norm(sums, axis=1)
    cos = dots / np.maximum(norms, 1e-12)
    rows = np.arange(len(y))
    own_norm = np.sqrt(np.maximum(norms[y] ** 2 - 2 * dots[rows, y] + 1.0, 0.0))
    own = (dots[rows, y] - 1.0) / np.maximum(own_norm, 1e-12)
    single = np.bincount(y, minlength=n_classes)[y] < 2
    cos[rows, y] = -np.inf
    cos[:, np.bincount(y, minlength=n_classes) == 0] = -np.inf  # no images, no mean
    score = own - cos.max(axis=1)
    score[single] = np.nan
    return score, cos.argmax(axis=1)


def label_scores(space: Space, paths: list[str]) -> pd.DataFrame:
    """path, label, suggested, score of every labelled image, most suspicious first (unscored
    ones, NaN, last); `paths` names each manifest row (graft.data.manifest.origins)."""
    rows = labelled(space.rows)
    index = rows.index.to_numpy()
    classes = sorted(rows["label"].unique())
    y = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    score, other = loo_margin(space.z[index], y, len(classes)) if len(classes) > 1 else (
        np.full(len(rows), np.nan), np.zeros(len(rows), int))
    table = pd.DataFrame({"path": [paths[i] for i in index], "label": rows["label"].to_numpy(),
                          "suggested": [classes[k] for k in other], "score": score.round(4)})
    return table.sort_values("score", kind="stable").reset_index(drop=True)


def label_issues(scores: pd.DataFrame, margin: float) -> pd.DataFrame:
    """The rows of `label_scores` below `margin` (reports/label_issues.csv)."""
    return scores.loc[scores["score"] < margin].reset_index(drop=True)


def ranking(z: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Row numbers from most to least suspicious (unscored rows last): what the benchmark's
    top-k recall reads."""
    score, _ = loo_margin(z, y, n_classes)
    return np.argsort(np.nan_to_num(score, nan=np.inf), kind="stable")
