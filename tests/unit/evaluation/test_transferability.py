"""graft.evaluation.transferability: LogME checked against the Gaussian evidence written out by
hand, and both scores prefer informative features. (`graft rank` on the tiny project:
tests/unit/test_cli.py; with a timm backbone: tests/unit/stages/test_timm_backbone.py.)"""

from __future__ import annotations

import numpy as np

from graft.evaluation import transferability as rank


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹I + α⁻¹FFᵀ) / N: the evidence of the Bayesian linear model, directly."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)) / n)


def test_logme_evidence_is_the_gaussian_marginal_likelihood_at_its_maximum() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((30, 5), (12, 40)):  # more images than dimensions, and fewer
        f = rng.normal(size=(n, d))
        # a target the features explain: the evidence has an interior maximum (with pure noise
        # it grows as α → ∞ and the 11 reference iterations stop on the way)
        y = f[:, 0] + 0.3 * rng.normal(size=n)
        ev = rank.evidence(f, y)
        direct = gaussian_log_evidence(f, y, ev.alpha, ev.beta)
        assert abs(ev.log_evidence - direct) < 1e-9, (ev, direct)
        if n < d:
            continue  # 12 images in 40 dimensions: 11 iterations at 1% tolerance stop early
        for a, b in ((2, 1), (0.5, 1), (1, 2), (1, 0.5)):  # α, β found by MacKay's fixed point
            assert gaussian_log_evidence(f, y, ev.alpha * a, ev.beta * b) < ev.log_evidence


def test_informative_features_score_higher_than_random_ones() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    noise = rng.normal(size=(40, 32))
    informative = noise.copy()
    informative[:, :4] += 3 * np.eye(4)[y]  # one direction per class
    assert rank.logme(informative, y) > rank.logme(noise, y) + 0.1
    assert rank.h_score(informative, y) > 1.5 * rank.h_score(noise, y)
