"""`graft summary` (graft.evaluation.summary): the run in a few lines, from metrics/*.json."""

from __future__ import annotations

from graft.core.files import write_json
from graft.evaluation.summary import summary_lines
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
