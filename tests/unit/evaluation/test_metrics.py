"""graft.evaluation.metrics against scikit-learn on hand-made arrays, and the bootstrap's
behaviour."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from graft.evaluation import metrics as M


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _noisy(n: int, k: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a classifier that is right more often than chance."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    return y, _softmax(logits)


Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 0, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 2, 0, 3, 1, 3, 0, 2])


def test_confusion_accuracy_f1_match_sklearn() -> None:
    cm = M.confusion(Y_TRUE, Y_PRED, 4)
    np.testing.assert_array_equal(cm, confusion_matrix(Y_TRUE, Y_PRED, labels=range(4)))
    assert M.accuracy(cm) == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert M.macro_f1(cm) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))


def test_per_class_scores_match_sklearn_with_an_undefined_precision() -> None:
    y_pred = np.where(Y_PRED == 3, 0, Y_PRED)  # class 3 is never predicted: precision undefined
    scores = M.per_class_scores(M.confusion(Y_TRUE, y_pred, 4))
    p, r, f, s = precision_recall_fscore_support(Y_TRUE, y_pred, labels=range(4), zero_division=0)
    np.testing.assert_allclose(scores["precision"], p)
    np.testing.assert_allclose(scores["recall"], r)
    np.testing.assert_allclose(scores["f1"], f)
    np.testing.assert_array_equal(scores["support"], s)


def test_macro_f1_ignores_classes_neither_present_nor_predicted() -> None:
    # k = 6 but classes 4 and 5 never occur: they must not drag the mean down
    cm = M.confusion(Y_TRUE, Y_PRED, 6)
    assert M.macro_f1(cm) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    # a class predicted but absent from the truth does count (F1 = 0), as in sklearn
    y_pred = np.where(Y_PRED == 3, 4, Y_PRED)
    cm = M.confusion(Y_TRUE, y_pred, 6)
    assert M.macro_f1(cm) == pytest.approx(f1_score(Y_TRUE, y_pred, average="macro"))


def test_roc_auc_matches_sklearn_with_ties() -> None:
    y, proba = _noisy(300, 4, signal=1.0, seed=1)
    proba = np.round(proba, 1)  # many tied scores
    proba /= proba.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert M.roc_auc_ovr(y, proba) == pytest.approx(expected)


def test_weights_equal_explicit_resampling() -> None:
    y, proba = _noisy(50, 3, signal=1.0, seed=2)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 50, size=(5, 50))
    weights = np.stack([np.bincount(row, minlength=50) for row in idx]).astype(float)
    batched = M.headline(y, proba, weights)
    for b, row in enumerate(idx):
        single = M.headline(y[row], proba[row])
        for key in ("accuracy", "macro_f1", "roc_auc"):
            assert batched[key][b] == pytest.approx(single[key]), key
        assert batched["roc_auc"][b] == pytest.approx(
            roc_auc_score(y[row], proba[row], multi_class="ovr", average="macro"))


def test_roc_auc_skips_a_class_absent_from_a_resample() -> None:
    y, proba = _noisy(60, 3, signal=1.0, seed=4)
    weights = np.ones((2, 60))
    weights[0, y == 2] = 0  # class 2 absent: macro over classes 0 and 1
    weights[1, y != 0] = 0  # only class 0 left: no AUC at all
    auc = M.roc_auc_ovr(y, proba, weights)
    keep = y != 2
    expected = np.mean([roc_auc_score(y[keep] == c, proba[keep, c]) for c in (0, 1)])
    assert auc[0] == pytest.approx(expected)
    assert np.isnan(auc[1])
    assert M.interval(np.array([np.nan, 0.5, 0.7])) == pytest.approx([0.505, 0.695])
    assert all(np.isnan(M.interval(np.array([np.nan]))))


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_images() -> None:
    widths = []
    for n in (100, 2000):
        y, proba = _noisy(n, 5, signal=1.5, seed=5)
        point = M.headline(y, proba)
        samples = M.bootstrap(y, [proba], resamples=500, seed=0)[0]
        for key in ("accuracy", "macro_f1", "roc_auc"):
            lo, hi = M.interval(samples[key])
            assert lo < point[key] < hi, (n, key)
        widths.append(np.diff(M.interval(samples["accuracy"]))[0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 20× the images, ~4.5× narrower


def test_bootstrap_is_seeded_and_paired() -> None:
    y, a = _noisy(200, 3, signal=1.0, seed=6)
    _, b = _noisy(200, 3, signal=0.5, seed=7)
    one = M.bootstrap(y, [a, b], resamples=100, seed=11)
    again = M.bootstrap(y, [a], resamples=100, seed=11)
    np.testing.assert_array_equal(one[0]["accuracy"], again[0]["accuracy"])
    other = M.bootstrap(y, [a], resamples=100, seed=12)
    assert not np.array_equal(one[0]["accuracy"], other[0]["accuracy"])
    for w in M.resample_weights(200, 300, seed=0):
        np.testing.assert_array_equal(w.sum(axis=1), 200)


def test_bootstrap_of_accuracy_and_f1_is_fast() -> None:
    y, proba = _noisy(2000, 10, signal=1.5, seed=8)
    pred = proba.argmax(axis=1)
    start = time.process_time()
    for w in M.resample_weights(len(y), 1000, seed=0):
        cm = M.confusion(y, pred, 10, w)
        M.accuracy(cm), M.macro_f1(cm)
    assert time.process_time() - start < 1.0  # CPU seconds; ~0.05 s on the 2-core dev machine
