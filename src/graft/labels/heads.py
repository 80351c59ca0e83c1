"""The classifier graft.labels uses to guess a suggested image's class and how unsure it is: not
the shipped model (that is finetune's), but the head that measured best at few labels.

Nearest class mean on cl2 features while some class has fewer than `cold_start` labels, then
logistic regression on the same features with C = 10, no standardisation. Measured on
Fashion-MNIST and digits (docs/labels.md): below ~3 labels per class the prototype wins (one or
two images per class cannot place a hyperplane); from ~5 per class the regression wins, by 5–10
points on digits. A standardiser fitted on a handful of rows (the probe's) is what fails at few
labels, and choosing C by cross-validation on 2–5 images per class picks noise, hence fixed C.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

C = 10.0  # inverse L2 strength on unit-length features; 10 and 100 measured alike, 1 erratic
TEMPERATURE = 30.0  # softmax of cosines; lower temperatures blur the margin (docs/labels.md)


def class_probabilities(z_labelled: np.ndarray, y: np.ndarray, z: np.ndarray, n_classes: int,
                        cold_start: int) -> np.ndarray:
    """(len(z), n_classes) probabilities from the labelled rows (cl2 features, class indices);
    a class without labels gets 0. Prototype head while any labelled class has fewer than
    `cold_start` images, logistic regression after."""
    counts = np.bincount(y, minlength=n_classes)
    present = np.flatnonzero(counts)
    out = np.zeros((len(z), n_classes))
    if len(present) == 0:
        return out
    if len(present) == 1:
        out[:, present[0]] = 1.0
        return out
    if counts[present].min() < cold_start:
        means = np.stack([z_labelled[y == c].mean(axis=0) for c in present])
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        logits = TEMPERATURE * (z @ means.T)
    else:
        clf = LogisticRegression(C=C, max_iter=2000)
        with threadpool_limits(1, user_api="blas"):  # small products; threads only spin
            clf.fit(z_labelled, y)
            logits = clf.decision_function(z)
        if logits.ndim == 1:  # two classes: sklearn keeps one column
            logits = np.stack([-logits / 2, logits / 2], axis=1)
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    out[:, present] = p / p.sum(axis=1, keepdims=True)
    return out


def margin(probs: np.ndarray) -> np.ndarray:
    """Best minus second-best probability per row: small = the model is unsure."""
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2] if probs.shape[1] > 1 else np.ones(len(probs))
