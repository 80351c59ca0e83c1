"""`graft summary` (graft.evaluation.summary): the run in a few lines, from metrics/*.json."""

from __future__ import annotations

import yaml

from graft.core.files import write_json
from graft.core.layout import Layout
from graft.evaluation.report import report_markdown, split_warnings
from graft.evaluation.report import summary_lines as evaluation_lines
from graft.evaluation.summary import params_changed_since_run, summary_lines
from graft.stages import evaluate
from tests.fixtures import evaluate_params, make_evaluate_project


def test_summary_names_the_network_the_onnx_files_came_from(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)
    write_json(layout.metrics("ingest"), {"source": "folder", "n_classes": 3, "n_train": 24,
                                          "n_val": 12, "n_test": 18})
    write_json(layout.metrics("finetune"), {"strategy": "linear_probe", "val_accuracy": 0.3})
    evaluate.run(evaluate_params(cnn_epochs=2, on_negative_transfer="use_baseline"), layout)
    lines = summary_lines(layout)
    assert f"model: {layout.baseline_model}" in " ".join(lines)
    assert not any(line.startswith(f"model: {layout.model} ") for line in lines)


def _figures(n_test: int, n_val: int) -> dict:
    return {"n_test": n_test, "n_val": n_val, "class_names": ["a", "b", "c"], "accuracy": 1.0,
            "accuracy_ci": [1.0, 1.0], "macro_f1": 1.0, "macro_f1_ci": [1.0, 1.0],
            "roc_auc": 1.0, "roc_auc_ci": [1.0, 1.0], "baselines": {}, "baselines_ci": {},
            "best_baseline": None, "negative_transfer": False, "transfer_gain": None}


def test_small_splits_are_called_out_in_summary_and_report() -> None:
    lines = evaluation_lines(_figures(n_test=9, n_val=6))
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 2
    assert "only 9 test images" in warnings[0] and "11.1 points" in warnings[0]
    assert "only 6 validation images for 3 classes" in warnings[1]
    assert "only 9 test images" in report_markdown(_figures(n_test=9, n_val=6))
    assert not split_warnings(_figures(n_test=2000, n_val=100))


def test_summary_warns_when_params_changed_since_the_figures(tmp_path) -> None:
    layout = Layout(tmp_path)
    layout.params.write_text("ingest:\n  source: folder\n  path: /data/mine\n")
    lock = {"schema": "2.0", "stages": {"ingest": {"cmd": "graft ingest", "params": {
        "params.yaml": {"ingest": {"source": "fashion-mnist", "path": "/usr/share/f"}}}}}}
    layout.dvc_lock.write_text(yaml.safe_dump(lock))
    assert params_changed_since_run(layout) == ["ingest.path", "ingest.source"]
    layout.params.write_text("ingest:\n  source: fashion-mnist\n  path: /usr/share/f\n")
    assert params_changed_since_run(layout) == []
