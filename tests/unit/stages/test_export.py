"""The export stage: valid ONNX with metadata, parity with torch, a dynamic batch, the int8/fp16
gates, and failures that publish nothing they should not. (The int8/fp16 files themselves:
tests/unit/deploy/test_quantize.py; foreign ONNX files: deploy/test_onnx_model.py.)"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

import graft
from graft.core.config import ConfigError
from graft.core.files import sha256_file
from graft.deploy.onnx_model import OnnxClassifier, read_metadata
from graft.models.checkpoint import load_checkpoint
from graft.stages import export
from tests.fixtures import BACKBONE, CLASSES, EXPORT_SIZE, export_params, make_export_project


def test_export_writes_checked_onnx_with_graft_metadata(exported):
    layout, metrics = exported
    proto = onnx.load(str(layout.onnx))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [
        3, EXPORT_SIZE, EXPORT_SIZE]

    meta = read_metadata(layout.onnx)
    assert meta["class_names"] == CLASSES
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.5, 0.5, 0.5]
    assert meta["input_size"] == EXPORT_SIZE
    assert meta["backbone"] == BACKBONE
    assert meta["version"] == graft.__version__
    assert meta["strategy"] == "linear_probe"
    assert meta["source_sha256"] == sha256_file(layout.model)
    raw = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(raw["graft.class_names"]) == CLASSES


def test_parity_passes_and_metrics_are_written(exported):
    layout, metrics = exported
    assert metrics["parity_passed"] is True
    assert metrics["n_parity_images"] == 6  # 3 classes × 2 test images
    assert metrics["top1_agreement"] == 1.0
    assert 0.0 <= metrics["max_abs_diff"] <= 1e-4
    assert metrics["onnx"] == "models/model.onnx"
    assert metrics["onnx_bytes"] == layout.onnx.stat().st_size
    assert metrics["opset"] == 17
    assert json.loads(layout.metrics("export").read_text()) == metrics
    assert not list(layout.models.glob(".*"))  # no temporary file or folder left behind


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_matches_torch(exported, batch):
    layout, _ = exported
    model, _ = load_checkpoint(layout.model)
    x = np.random.default_rng(batch).standard_normal(
        (batch, 3, EXPORT_SIZE, EXPORT_SIZE)).astype(np.float32)
    theirs = OnnxClassifier(layout.onnx, providers=["CPUExecutionProvider"]).logits(x)
    with torch.inference_mode():
        ours = model(torch.from_numpy(x)).numpy()
    assert theirs.shape == (batch, len(CLASSES))
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_failed_parity_raises_and_keeps_previous_onnx(exported, monkeypatch):
    layout, _ = exported
    before = layout.onnx.read_bytes()
    # Perturb the reference: the exported graph is now wrong by 0.5 per logit.
    real = export._reference

    def skewed(*args, **kwargs):
        logits, rows, against = real(*args, **kwargs)
        return logits + 0.5, rows, against

    monkeypatch.setattr(export, "_reference", skewed)
    with pytest.raises(export.ExportError,
                       match=r"parity check against .* failed.*= 0\.5.*allowed 0\.0001"):
        export.run(export_params(), layout)
    assert layout.onnx.read_bytes() == before
    assert not list(layout.models.glob(".*tmp*")) and not list(layout.models.glob(".export-*"))


def test_a_threshold_no_export_can_meet_fails_without_a_model(tmp_path):
    with pytest.raises(ConfigError, match=r"params: export\.max_abs_diff = -1\.0 must be > 0"):
        export_params(max_abs_diff=-1.0)  # refused when params.yaml is read
    # past the params check (built in code), the parity gate itself still publishes nothing
    layout = make_export_project(tmp_path, per_class=1)
    params = export_params()
    impossible = dataclasses.replace(params, export=dataclasses.replace(params.export,
                                                                        max_abs_diff=-1.0))
    with pytest.raises(export.ExportError, match="max .Δlogit. = .*allowed -1"):
        export.run(impossible, layout)
    assert not layout.onnx.exists()
    assert not layout.metrics("export").exists()


def test_unsupported_opset_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"params: export\.opset = 13 must be in \[17, 20\]"):
        export_params(opset=13)


def test_failing_int8_gate_publishes_fp32_only_and_names_both_figures(tmp_path):
    layout = make_export_project(tmp_path, per_class=1)
    layout.onnx_int8.write_bytes(b"stale int8 from an older model")
    # −100 points allowed: every int8 copy fails unless fp32 scores 0% and int8 100%. Below
    # the range params.yaml may hold (≥ 0), so set past the params check.
    params = export_params(fp16=False)
    params = dataclasses.replace(params, export=dataclasses.replace(params.export,
                                                                    max_int8_drop=-100.0))
    with pytest.raises(export.ExportError,
                       match=r"model\.int8\.onnx: int8 on \d+ test images \(\d+\.\d\d% vs fp32 "
                             r"\d+\.\d\d%\).*exceeds export\.max_int8_drop = -100\.0"):
        export.run(params, layout)
    assert read_metadata(layout.onnx)["precision"] == "fp32"  # the fp32 model was published
    assert not layout.onnx_int8.exists()  # the stale file is gone, no new one written
    metrics = json.loads(layout.metrics("export").read_text())
    assert metrics["int8"]["passed"] is False and metrics["int8"]["file"] is None
    assert not list(layout.models.glob(".*"))


def test_variants_can_be_switched_off(tmp_path):
    layout = make_export_project(tmp_path, per_class=1)
    metrics = export.run(export_params(int8=False, fp16=False), layout)
    assert layout.onnx.exists() and not layout.onnx_int8.exists()
    assert not layout.onnx_fp16.exists()
    assert "int8" not in metrics and "fp16" not in metrics
