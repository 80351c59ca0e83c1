"""The retrain loop's steps that need no DVC (graft.lifecycle.retrain): change detection, params
overrides, the pipeline's figures for the report. (The whole loop: tests/e2e/test_retrain.py.)"""

from __future__ import annotations

import pytest

from graft.core.config import ConfigError, load_params
from graft.core.layout import Layout
from graft.lifecycle.report import markdown
from graft.lifecycle.retrain import (
    RetrainError,
    compare_manifests,
    manifest_hash,
    pipeline_metrics,
    restore_params,
    run_params,
)
from tests.fixtures import manifest_frame as manifest

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


USER_PARAMS = ("# my own notes\nfinetune:\n  lr: 0.001   # tuned by hand\n"
               "  c_grid: [0.1, 1.0]\ningest:\n  path: my-images\n")


def test_run_params_hold_the_overrides_for_the_run_only(tmp_path):
    layout = Layout(tmp_path)
    layout.params.write_text(USER_PARAMS)
    with run_params(layout, "/data/new", {"finetune.c_grid": [0.5]}) as changes:
        params = load_params(layout.params)  # what the run's `dvc repro` reads
        assert params.ingest.path == "/data/new" and params.finetune.c_grid == [0.5]
        assert params.finetune.lr == 0.001 and changes["ingest.path"] == "/data/new"
    assert layout.params.read_text() == USER_PARAMS  # comments, flow lists, ingest.path: theirs
    assert not layout.retrain_params.exists()
    with pytest.raises(ConfigError, match="finetune.epochs: expected an integer"), \
            run_params(layout, None, {"finetune.epochs": "many"}):
        pass
    with pytest.raises(RetrainError, match="expected section.key"), \
            run_params(layout, None, {"lr": 0.1}):
        pass
    with pytest.raises(RuntimeError), run_params(layout, None, {"finetune.lr": 0.5}):
        raise RuntimeError("the run crashed")
    assert layout.params.read_text() == USER_PARAMS  # a rejected or crashed run writes nothing


def test_a_killed_runs_params_come_back_unless_the_user_edited_them(tmp_path):
    layout = Layout(tmp_path)
    layout.params.write_text(USER_PARAMS)
    killed = run_params(layout, None, {"finetune.lr": 0.5})
    killed.__enter__()  # a run killed inside: the journal and the run's params stay
    assert load_params(layout.params).finetune.lr == 0.5
    assert restore_params(layout) and layout.params.read_text() == USER_PARAMS
    killed = run_params(layout, None, {"finetune.lr": 0.5})
    killed.__enter__()
    layout.params.write_text("finetune:\n  lr: 0.2\n")  # the user edited it since: theirs wins
    assert not restore_params(layout) and load_params(layout.params).finetune.lr == 0.2


def test_pipeline_metrics_are_the_headline_test_figures_read_as_people_do(tmp_path):
    layout = Layout(tmp_path)
    assert pipeline_metrics(layout) is None  # before the evaluate stage
    layout.metrics_dir.mkdir()
    layout.metrics("scores").write_text('{"accuracy": 0.80851, "roc_auc": 0.97712, '
                                        '"baseline": 0.697, "gain": 0.1115}')
    figures = pipeline_metrics(layout)
    assert figures == {"accuracy": 0.80851, "roc_auc": 0.97712, "baseline": 0.697, "gain": 0.1115}
    text = markdown({"status": "kept champion", "pipeline_metrics": figures})
    assert "| accuracy | 80.9% |" in text and "| gain | +11.2 pts |" in text
    assert "| roc_auc | 0.977 |" in text and "0.80851" not in text