"""Validate stage: the GX suite passes clean data and names the rule and files when it fails
(the per-file table alone: tests/unit/data/test_checks.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from graft.core.layout import Layout
from graft.data.manifest import ManifestError, write_manifest
from graft.stages import ingest, validate
from tests.fixtures import image_tree, ingest_params, write_prepared

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _quarantine(layout: Layout) -> list[dict[str, str]]:
    with open(layout.reports / "quarantine.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_clean_data_passes_and_reports(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 4, "b": 3})
    layout = Layout(tmp_path / "proj")
    p = ingest_params("folder", src, {"val_per_class": 1})
    ingest.run(p, layout)
    metrics = validate.run(p, layout)
    assert metrics["n_images"] == 7 and metrics["n_classes"] == 2
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (5, 2, 0)
    assert metrics["imbalance_ratio"] == 1.5
    assert set(metrics["checks"]) == {
        "split_valid", "decodes", "min_side", "label_in_train_classes",
        "no_content_in_two_splits", "at_least_two_classes", "min_per_class", "max_imbalance",
        "unlabeled_without_label"}
    assert all(metrics["checks"].values())
    report = json.loads((layout.reports / "validate.json").read_text())
    assert report["success"] is True
    assert {c["expectation"] for c in report["checks"]} >= {
        "expect_column_values_to_be_in_set", "expect_table_row_count_to_be_between"}
    assert _quarantine(layout) == []
    assert json.loads(layout.metrics("validate").read_text()) == metrics


def test_imbalance_and_min_per_class_name_the_classes(tmp_path):
    layout = Layout(tmp_path / "proj")
    write_prepared(layout, [(f"a{i}.png", "big", "train") for i in range(12)]
              + [("s0.png", "small", "train")])
    p = ingest_params("folder", "-", validate={"min_per_class": 2, "max_imbalance": 10.0})
    with pytest.raises(validate.ValidationError) as err:
        validate.run(p, layout)
    message = str(err.value)
    assert "max_imbalance: observed 12.0; classes: big" in message
    assert "min_per_class: observed 1; classes: small" in message
    report = json.loads((layout.reports / "validate.json").read_text())
    checks = {c["rule"]: c for c in report["checks"]}
    assert checks["max_imbalance"]["success"] is False and checks["decodes"]["success"] is True
    assert not layout.metrics("validate").exists()  # metrics only on success


def test_same_content_in_two_splits_is_named(tmp_path):
    layout = Layout(tmp_path / "proj")
    write_prepared(layout, [("a0.png", "a", "train"), ("a1.png", "a", "train"),
                       ("b0.png", "b", "train"), ("dup:a0.png", "a", "test")])
    with pytest.raises(validate.ValidationError,
                       match=r"no_content_in_two_splits: 2 file\(s\): .*a0\.png.*copy_of_a0\.png"):
        validate.run(ingest_params("folder", "-"), layout)
    rows = _quarantine(layout)
    assert {r["path"] for r in rows} == {"images/a0.png", "images/copy_of_a0.png"}
    assert {r["rule"] for r in rows} == {"no_content_in_two_splits"}


def test_invalid_split_value_fails(tmp_path):
    layout = Layout(tmp_path / "proj")
    write_prepared(layout, [("a0.png", "a", "train"), ("b0.png", "b", "train"),
                       ("b1.png", "b", "holdout")])
    with pytest.raises(validate.ValidationError, match=r"split_valid: 1 file\(s\): .*b1\.png"):
        validate.run(ingest_params("folder", "-"), layout)


def test_message_lists_ten_files_then_counts_the_rest(tmp_path):
    layout = Layout(tmp_path / "proj")
    write_prepared(layout, [(f"a{i}.png", "a", "train") for i in range(2)]
              + [(f"b{i}.png", "b", "train") for i in range(2)])
    for i in range(12):  # twelve files that are not images, listed in the manifest as val
        (layout.prepared / "images" / f"bad{i:02d}.png").write_text("not a png")
    df = pd.read_csv(layout.manifest)
    extra = pd.DataFrame({"path": [f"images/bad{i:02d}.png" for i in range(12)], "label": "a",
                          "split": "val", "sha256": [f"x{i}" for i in range(12)],
                          "width": "", "height": "", "mode": "unreadable"})
    write_manifest(layout.manifest, pd.concat([df, extra]))
    with pytest.raises(validate.ValidationError) as err:
        validate.run(ingest_params("folder", "-"), layout)
    message = str(err.value)
    assert "decodes: 12 file(s)" in message and "; and 2 more" in message
    assert "bad09.png (not an image (unrecognised format))" in message
    assert "bad10.png" not in message
    assert len(_quarantine(layout)) == 12  # the report lists every one


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found; run the ingest stage"):
        validate.run(ingest_params("folder", "-"), Layout(tmp_path / "proj"))


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_default_demo_validates(tmp_path):
    layout = Layout(tmp_path / "proj")
    p = ingest_params("fashion-mnist", FASHION, {"shots_per_class": 10, "val_per_class": 10,
                                          "test_size": 2000}, {"min_per_class": 2})
    ingest.run(p, layout)
    metrics = validate.run(p, layout)  # 2,200 decodes plus the suite: a few seconds
    assert metrics["n_images"] == 2200 and metrics["imbalance_ratio"] == 1.0
