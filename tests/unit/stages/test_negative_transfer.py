"""`evaluate.on_negative_transfer`: 'warn' reports, 'fail' raises after writing every output,
'use_baseline' makes the export stage publish the baseline."""

from __future__ import annotations

import json

import pytest

from graft.core.config import ConfigError, params_from_dict
from graft.deploy.onnx_model import read_metadata
from graft.evaluation.report import summary_lines
from graft.models.checkpoint import deployed_checkpoint
from graft.stages import evaluate, export
from tests.fixtures import evaluate_params, make_evaluate_project


def test_fail_raises_after_writing_the_evidence(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)  # always class 0: baselines win
    with pytest.raises(evaluate.NegativeTransferError, match="NEGATIVE TRANSFER") as info:
        evaluate.run(evaluate_params(cnn_epochs=2, on_negative_transfer="fail"), layout)
    message = str(info.value)
    assert "on_negative_transfer" in message and str(layout.model) in message
    assert isinstance(info.value, ValueError)  # the CLI turns it into a clean non-zero exit
    saved = json.loads(layout.metrics("evaluate").read_text())
    assert saved["negative_transfer"] is True and saved["on_negative_transfer"] == "fail"
    assert f"the best baseline ({saved['best_baseline']})" in message
    assert "NEGATIVE TRANSFER" in layout.report("evaluate.md").read_text()


def test_warn_returns_the_metrics(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)
    result = evaluate.run(evaluate_params(cnn_epochs=2, on_negative_transfer="warn"), layout)
    assert result["negative_transfer"] is True and result["on_negative_transfer"] == "warn"


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="on_negative_transfer"):
        params_from_dict({"evaluate": {"on_negative_transfer": "ignore"}})


def test_use_baseline_exports_the_baseline_and_says_so(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)
    base = evaluate_params(cnn_epochs=2, on_negative_transfer="use_baseline").to_dict()
    params = params_from_dict({**base, "export": {"int8": False, "fp16": False,
                                                  "batch_size": 4}})
    result = evaluate.run(params, layout)  # no exception: the baseline takes over
    best = result["best_baseline"]
    assert result["negative_transfer"] and result["deployed"] == "baseline"
    assert result["deployed_network"] == best
    assert "Deployed: the" in layout.report("evaluate.md").read_text()
    assert any("DEPLOYING THE BASELINE" in line for line in summary_lines(result))

    metrics = export.run(params, layout)
    assert metrics["deployed"] == "baseline" and metrics["source"] == "models/baseline.pt"
    shipped = read_metadata(layout.onnx)
    assert shipped["deployed"] == "baseline" and shipped["backbone"] == best
    assert int(shipped["input_size"]) == params.evaluate.baseline_image_size
    # what ships is what evaluate scored: the ONNX file's test accuracy is the baseline's
    assert metrics["accuracy"] == pytest.approx(result["baselines"][best])


def test_warn_keeps_the_transferred_model_deployed(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)
    result = evaluate.run(evaluate_params(cnn_epochs=2, on_negative_transfer="warn"), layout)
    assert result["deployed"] == "model" and deployed_checkpoint(layout) == layout.model
    assert layout.baseline_model.exists()  # written every time: a DVC output of the stage


def test_a_verdict_about_another_model_is_refused(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)
    evaluate.run(evaluate_params(cnn_epochs=2, on_negative_transfer="use_baseline"), layout)
    assert deployed_checkpoint(layout) == layout.baseline_model
    layout.model.write_bytes(layout.model.read_bytes() + b"\0")  # retrained since the verdict
    with pytest.raises(ValueError, match="run the evaluate stage again"):
        deployed_checkpoint(layout)
