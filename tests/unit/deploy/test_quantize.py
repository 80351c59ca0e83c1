"""INT8 and FP16 exports (graft.deploy.quantize): QDQ per-channel graphs, metadata on every file,
float32 input and output. (The accuracy gates in the export stage: tests/unit/stages/
test_export.py.)"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from graft.core.config import ConfigError, params_from_dict
from graft.deploy.onnx_model import OnnxClassifier, read_metadata
from graft.deploy.quantize import QuantizeError, _ArrayReader, quantize_int8
from tests.fixtures import CLASSES, EXPORT_SIZE


def test_every_file_is_self_describing(exported):
    layout, metrics = exported
    seen = {}
    for precision, path in (("fp32", layout.onnx), ("int8", layout.onnx_int8),
                            ("fp16", layout.onnx_fp16)):
        meta = read_metadata(path)
        assert meta["precision"] == precision
        assert meta["class_names"] == CLASSES and meta["input_size"] == EXPORT_SIZE
        assert meta["resize"] == "shorter_side_bilinear_center_crop"
        assert len(meta["params_sha256"]) == 64 and meta["n_test"] == "6"
        expected = metrics["accuracy"] if precision == "fp32" else metrics[precision]["accuracy"]
        assert float(meta["test_accuracy"]) == pytest.approx(expected, abs=1e-6)
        seen[precision] = meta["params_sha256"]
    assert len(set(seen.values())) == 1  # one training run behind all three files


def test_int8_is_per_channel_qdq_and_small(exported):
    layout, metrics = exported
    proto = onnx.load(str(layout.onnx_int8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {t.name: t for t in proto.graph.initializer}
    conv_weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                    and inits.get(n.input[0]) is not None
                    and inits[n.input[0]].data_type == TensorProto.INT8]
    assert conv_weights, "no int8 weights"
    per_channel = [n for n in conv_weights if len(inits[n.input[1]].dims) == 1
                   and inits[n.input[1]].dims[0] > 1]
    assert len(per_channel) >= 40  # Lite0 has 49 convolutions; each has its own channel scales
    int8 = metrics["int8"]
    assert int8["format"] == "QDQ" and int8["per_channel"] is True
    assert int8["bytes"] == layout.onnx_int8.stat().st_size
    assert int8["size_vs_fp32"] <= 0.35
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["passed"] is True
    # input and output stay float32 and the model runs through Graft's own classifier
    size = EXPORT_SIZE
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    assert OnnxClassifier(layout.onnx_int8).logits(x).shape == (2, len(CLASSES))


def test_fp16_keeps_float32_io_and_reports_parity(exported):
    layout, metrics = exported
    proto = onnx.load(str(layout.onnx_fp16))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)
    fp16 = metrics["fp16"]
    assert 0.0 < fp16["max_abs_diff"] < 0.5  # half precision, not a different network
    assert fp16["top1_agreement"] >= 5 / 6
    assert 0.4 < fp16["size_vs_fp32"] < 0.6
    assert json.loads(layout.metrics("export").read_text())["fp16"] == fp16


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="export.calibration: 'kl' is not one of"):
        params_from_dict({"export": {"calibration": "kl"}})
    with pytest.raises(QuantizeError, match="calibration method 'kl'"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", np.zeros((1, 3, 8, 8)), "kl")
    with pytest.raises(QuantizeError, match="needs at least one training image"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", np.zeros((0, 3, 8, 8)))


def test_calibration_batches_are_equal_sized():
    # onnxruntime's histogram calibrators fail on a shorter last batch
    reader = _ArrayReader("image", np.zeros((21, 3, 4, 4), np.float32), batch_size=16)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["image"]))
    assert sum(sizes) == 21 and len(set(sizes)) == 1
