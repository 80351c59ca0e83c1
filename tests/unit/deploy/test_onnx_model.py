"""graft.deploy.onnx_model: what is not a Graft ONNX file is a clear error; sessions ask only for
the execution providers this onnxruntime lists, CPU last. (A Graft model's metadata and its
dynamic batch: tests/unit/stages/test_export.py.)"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from graft.deploy.onnx_model import (
    OnnxClassifier,
    OnnxModelError,
    available_providers,
    create_session,
    read_metadata,
)


def foreign_onnx(path: Path) -> Path:
    """A valid ONNX file that Graft did not write (one Relu, no graft.* metadata)."""
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_foreign_onnx_is_not_a_graft_model(tmp_path):
    path = foreign_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(OnnxModelError, match=r"foreign\.onnx: not a Graft model \(no graft"):
        read_metadata(path)
    with pytest.raises(OnnxModelError, match="not a Graft model"):
        OnnxClassifier(path)


def test_non_onnx_and_missing_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a protobuf, just some words\n")
    with pytest.raises(OnnxModelError, match=r"notes\.onnx: not an ONNX model"):
        read_metadata(text)
    with pytest.raises(OnnxModelError, match=r"absent\.onnx: file not found"):
        read_metadata(tmp_path / "absent.onnx")


def test_providers_only_listed_ones_and_cpu_last(tmp_path):
    import onnxruntime as ort

    listed = set(ort.get_available_providers())
    providers = available_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert set(providers) <= listed
    assert available_providers(prefer_gpu=False) == ["CPUExecutionProvider"]
    session = create_session(foreign_onnx(tmp_path / "m.onnx"), threads=1)
    assert session.get_providers()[-1] == "CPUExecutionProvider"
