"""`evaluate.on_negative_transfer`: 'warn' reports, 'fail' raises after writing every output."""

from __future__ import annotations

import json

import pytest

from graft import evaluate
from graft.config import ConfigError, params_from_dict
from tests.unit.evaluate_fixtures import make_project, tiny_params


def test_fail_raises_after_writing_the_evidence(tmp_path) -> None:
    layout = make_project(tmp_path, zero_head=True)  # always class 0: the baselines win
    with pytest.raises(evaluate.NegativeTransferError, match="NEGATIVE TRANSFER") as info:
        evaluate.run(tiny_params(cnn_epochs=2, on_negative_transfer="fail"), layout)
    message = str(info.value)
    assert "on_negative_transfer" in message and str(layout.model) in message
    assert isinstance(info.value, ValueError)  # the CLI turns it into a clean non-zero exit
    saved = json.loads(layout.metrics("evaluate").read_text())
    assert saved["negative_transfer"] is True and saved["on_negative_transfer"] == "fail"
    assert "NEGATIVE TRANSFER" in (layout.reports / "evaluate.md").read_text()


def test_warn_returns_the_metrics(tmp_path) -> None:
    layout = make_project(tmp_path, zero_head=True)
    result = evaluate.run(tiny_params(cnn_epochs=2, on_negative_transfer="warn"), layout)
    assert result["negative_transfer"] is True and result["on_negative_transfer"] == "warn"


def test_fail_is_silent_when_transfer_wins(tmp_path) -> None:
    layout = make_project(tmp_path)
    result = {"negative_transfer": False, "best_baseline": "small_cnn", "transfer_gain": 0.1,
              "transfer_gain_ci": [0.05, 0.15]}
    evaluate.guard(result, "fail", layout)  # no exception
    with pytest.raises(evaluate.NegativeTransferError, match="small_cnn"):
        evaluate.guard({**result, "negative_transfer": True, "transfer_gain": -0.1}, "fail",
                       layout)


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="on_negative_transfer"):
        params_from_dict({"evaluate": {"on_negative_transfer": "ignore"}})
