"""The retrain loop's pure parts: change detection, params overrides, the artifact and message."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from graft.config import ConfigError, load_params
from graft.layout import Layout
from graft.retrain import RetrainError, apply_overrides, compare_manifests, manifest_hash
from graft.retrain_report import commit_message, markdown, table_rows


def manifest(rows: list[tuple[str, str, str]], prefix: str = "images") -> pd.DataFrame:
    return pd.DataFrame([{"path": f"{prefix}/{sha}.png", "label": label, "split": split,
                          "sha256": sha} for sha, label, split in rows])


ROWS = [("h1", "a", "train"), ("h2", "b", "train"), ("h3", "a", "test")]


def test_manifest_hash_ignores_paths_and_row_order():
    assert manifest_hash(manifest(ROWS)) == manifest_hash(manifest(ROWS[::-1], prefix="moved"))
    relabelled = [("h1", "b", "train")] + ROWS[1:]
    resplit = [("h1", "a", "val")] + ROWS[1:]
    assert len({manifest_hash(manifest(r)) for r in (ROWS, relabelled, resplit)}) == 3


def test_compare_manifests_reports_no_change_additions_and_no_champion():
    same = compare_manifests(manifest(ROWS), manifest(ROWS[::-1]))
    assert not same["changed"] and same["summary"] == "no new or changed images"
    grown = compare_manifests(manifest(ROWS[:2]), manifest(ROWS + [("h4", "b", "test")]))
    assert grown["changed"] and (grown["added"], grown["removed"]) == (2, 0)
    assert grown["summary"] == "2 images added, 0 removed"
    resplit = compare_manifests(manifest(ROWS), manifest([("h1", "a", "val")] + ROWS[1:]))
    assert resplit["changed"] and resplit["summary"].endswith("labels or splits changed")
    first = compare_manifests(None, manifest(ROWS))
    assert first["changed"] and first["summary"] == "no champion yet; 3 images"


def test_apply_overrides_writes_checked_values_into_params_yaml(tmp_path):
    layout = Layout(tmp_path)
    layout.params.write_text(yaml.safe_dump({"finetune": {"lr": 0.001}}))
    apply_overrides(layout, "/data/new", {"finetune.c_grid": [0.5]})
    params = load_params(layout.params)
    assert params.ingest.path == "/data/new" and params.finetune.c_grid == [0.5]
    assert params.finetune.lr == 0.001
    with pytest.raises(ConfigError, match="finetune.epochs: expected an integer"):
        apply_overrides(layout, None, {"finetune.epochs": "many"})
    with pytest.raises(RetrainError, match="expected section.key"):
        apply_overrides(layout, None, {"lr": 0.1})
    assert load_params(layout.params).finetune.epochs == 15  # a rejected override writes nothing


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
