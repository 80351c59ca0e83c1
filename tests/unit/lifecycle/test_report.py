"""The retrain run's report (graft.lifecycle.report): the artifact shows both models and every
reason; the commit message carries the metrics."""

from __future__ import annotations

import pytest

from graft.lifecycle.report import commit_message, markdown, table_rows

RESULT = {
    "status": "kept champion",
    "change": {"summary": "4 images added, 0 removed"},
    "champion_version": "20260101T000000Z-aaaa",
    "evaluation_notes": ["30 test images from the new manifest"],
    "champion_score": {"accuracy": 0.7, "recall": {"a": 0.7, "c": 0.7}, "n": 30},
    "challenger_score": {"accuracy": 0.8, "recall": {"a": 1.0, "c": 0.4}, "n": 30},
    "reasons": ["accuracy 70.0% → 80.0% (+10.0 points; needed ≥ +1.0): passes",
                "class 'c': recall 70.0% → 40.0% falls 30.0 points (allowed ≤ 5.0): fails",
                "keep the champion"],
}


def test_the_artifact_shows_both_models_and_every_reason():
    text = markdown(RESULT)
    assert text.startswith("# Graft retrain: kept champion")
    assert "| accuracy | 70.0% | 80.0% | +10.0 pts |" in text
    assert "| recall[c] | 70.0% | 40.0% | -30.0 pts |" in text
    assert all(f"- {r}" in text for r in RESULT["reasons"])
    rows = table_rows(RESULT)
    assert [r["metric"] for r in rows] == ["accuracy", "recall[a]", "recall[c]"]
    assert rows[2]["change"] == pytest.approx(-0.3)


def test_commit_message_carries_the_metrics():
    msg = commit_message({**RESULT, "promoted_version": "20260202T000000Z-bbbb"})
    assert msg.splitlines()[0] == ("retrain: promote 20260202T000000Z-bbbb "
                                   "(accuracy 80.0%, was 70.0%)")
    assert "- keep the champion" in msg
    first = commit_message({**RESULT, "champion_score": None, "promoted_version": "v"})
    assert "first champion" in first.splitlines()[0]
