"""Classification statistics with 95% bootstrap intervals, vectorised over resamples in numpy.

Every figure is computed from a confusion matrix (accuracy, macro-F1, per-class scores) or from
weighted ranks (one-vs-rest ROC-AUC), and every function accepts a leading batch of resamples,
so the point estimate and its bootstrap share one implementation. A bootstrap resample is a row
of multiplicities (how many times each test image was drawn), which keeps the resamples of the
model and of the baselines identical when they use the same seed (a paired comparison).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

CHUNK = 256  # resamples per batch: bounds memory at CHUNK × n_test × 8 bytes per array


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int,
              weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (…, k, k), rows = actual class, columns = predicted class.

    `weights` (B, N) gives B weighted confusions at once (bootstrap multiplicities); None gives
    the single (k, k) confusion of the data as it is.
    """
    codes = np.asarray(y_true, np.int64) * k + np.asarray(y_pred, np.int64)
    if weights is None:
        return np.bincount(codes, minlength=k * k).reshape(k, k)
    b = weights.shape[0]
    offsets = (np.arange(b, dtype=np.int64)[:, None] * (k * k) + codes[None, :]).ravel()
    counts = np.bincount(offsets, weights=weights.ravel(), minlength=b * k * k)
    return counts.reshape(b, k, k)


def accuracy(cm: np.ndarray) -> np.ndarray:
    """Fraction on the diagonal of each confusion (…, k, k) → (…)."""
    return np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support per class, each (…, k); 0 where undefined
    (no predictions of a class, or no images of it), as sklearn's zero_division=0."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = support + predicted  # F1 = 2·tp / (actual + predicted)
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(cm: np.ndarray) -> np.ndarray:
    """Unweighted mean F1 over the classes that occur as actual or predicted labels
    (sklearn's average='macro' without `labels`): a class absent from the test set and never
    predicted neither helps nor hurts."""
    f1 = per_class_scores(cm)["f1"]
    present = (cm.sum(axis=-1) + cm.sum(axis=-2)) > 0
    return (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def roc_auc_ovr(y_true: np.ndarray, proba: np.ndarray,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Macro one-vs-rest ROC-AUC from class probabilities (N, k); batched by `weights` (B, N).

    Per class, AUC is the Mann-Whitney statistic: the chance that a random image of the class
    scores higher than a random image of another class, ties counting one half. A class with no
    positive or no negative images in a resample (possible in small test sets) has no AUC and is
    left out of that resample's macro average; a resample where no class has one gives NaN, and
    `interval` skips it.
    """
    y_true = np.asarray(y_true, np.int64)
    single = weights is None
    w = np.ones((1, len(y_true))) if single else np.asarray(weights, np.float64)
    k = proba.shape[1]
    total = np.zeros(w.shape[0])
    classes = np.zeros(w.shape[0])
    for c in range(k):
        auc = _weighted_auc(proba[:, c], y_true == c, w)
        defined = ~np.isnan(auc)
        total += np.where(defined, auc, 0.0)
        classes += defined
    with np.errstate(invalid="ignore"):
        macro = np.where(classes > 0, total / np.maximum(classes, 1), np.nan)
    return macro[0] if single else macro


def _weighted_auc(score: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of `score` for the binary labels `positive` under each row of weights (B, N)."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # tie groups
    w_sorted = w[:, order]  # one gather: the bootstrap calls this for 10 classes × 3 models
    pos_w = np.add.reduceat(w_sorted * positive[order], starts, axis=1)  # (B, groups)
    neg_w = np.add.reduceat(w_sorted, starts, axis=1) - pos_w
    neg_below = np.cumsum(neg_w, axis=1) - neg_w  # negatives scoring strictly lower
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    pairs = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def headline(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None
             ) -> dict[str, np.ndarray]:
    """accuracy, macro_f1 and roc_auc of argmax predictions; (B,) arrays when weighted."""
    k = proba.shape[1]
    cm = confusion(y_true, proba.argmax(axis=1), k, weights)
    return {"accuracy": accuracy(cm), "macro_f1": macro_f1(cm),
            "roc_auc": roc_auc_ovr(y_true, proba, weights)}


def resample_weights(n: int, resamples: int, seed: int, chunk: int = CHUNK
                     ) -> Iterator[np.ndarray]:
    """Bootstrap multiplicities in chunks of (≤chunk, n): each row draws n of n with replacement.

    The draws depend only on (n, resamples, seed), so two models scored on the same test set
    with the same seed see the same resamples.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        rows = np.arange(b, dtype=np.int64)[:, None] * n
        yield np.bincount((rows + idx).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap(y_true: np.ndarray, probas: Sequence[np.ndarray], resamples: int, seed: int
              ) -> list[dict[str, np.ndarray]]:
    """Headline figures of each probability matrix in `probas` on the same resamples:
    one dict per matrix of (resamples,) arrays."""
    out: list[dict[str, list[np.ndarray]]] = [
        {"accuracy": [], "macro_f1": [], "roc_auc": []} for _ in probas
    ]
    for w in resample_weights(len(y_true), resamples, seed):
        for store, proba in zip(out, probas, strict=True):
            for name, values in headline(y_true, proba, w).items():
                store[name].append(values)
    return [{name: np.concatenate(v) if v else np.zeros(0) for name, v in s.items()} for s in out]


def interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval [lo, hi] of bootstrap samples, NaN resamples skipped; [nan, nan] if
    none is left."""
    samples = np.asarray(samples, np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return [float("nan"), float("nan")]
    tail = (1.0 - level) / 2 * 100  # percent in each tail
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]
