"""graft.evaluation.compare and report: the model against the best baseline, paired intervals,
and the verdict in words."""

from __future__ import annotations

import numpy as np
import pytest

from graft.evaluation.compare import summarise
from graft.evaluation.report import summary_lines, verdict


def _point(acc: float) -> dict[str, float]:
    return {"accuracy": acc, "macro_f1": acc, "roc_auc": 0.9}


def _samples(acc: float) -> dict[str, np.ndarray]:
    noise = np.linspace(-0.05, 0.05, 101)
    return {"accuracy": acc + noise, "macro_f1": acc + noise, "roc_auc": 0.9 + noise}


@pytest.mark.parametrize(("model", "cnn", "negative"), [(0.6, 0.7, True), (0.8, 0.7, False),
                                                        (0.7, 0.7, False)])
def test_verdict_compares_with_the_best_baseline(model, cnn, negative) -> None:
    contenders = {"model": model, "pixels_logreg": 0.5, "small_cnn": cnn}
    cm = np.array([[5, 1], [2, 4]])
    result = summarise({k: _point(v) for k, v in contenders.items()},
                       {k: _samples(v) for k, v in contenders.items()}, cm, ["a", "b"])
    assert result["best_baseline"] == "small_cnn"
    assert result["transfer_gain"] == pytest.approx(model - cnn)
    assert result["negative_transfer"] is negative
    lo, hi = result["transfer_gain_ci"]
    assert lo == pytest.approx(model - cnn) == pytest.approx(hi)  # paired: the noise cancels
    assert any("NEGATIVE TRANSFER" in line for line in summary_lines(result)) is negative
    assert ("NEGATIVE TRANSFER" in verdict(result)) is negative
    assert "small_cnn" in verdict(result)
