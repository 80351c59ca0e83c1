"""Export stage and graft.onnx_model: valid ONNX with metadata, parity, dynamic batch, failures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import graft
from graft import export
from graft.checkpoint import load_checkpoint
from graft.files import sha256_file
from graft.onnx_model import (
    OnnxClassifier,
    OnnxModelError,
    available_providers,
    create_session,
    read_metadata,
)
from tests.unit.export_fixtures import BACKBONE, CLASSES, SIZE, exported, make_project, tiny_params

__all__ = ["exported"]  # the module-scoped fixture, imported so pytest finds it


def test_export_writes_checked_onnx_with_graft_metadata(exported):
    layout, metrics = exported
    proto = onnx.load(str(layout.onnx))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]

    meta = read_metadata(layout.onnx)
    assert meta["class_names"] == CLASSES
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.5, 0.5, 0.5]
    assert meta["input_size"] == SIZE
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
    x = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    theirs = OnnxClassifier(layout.onnx, providers=["CPUExecutionProvider"]).logits(x)
    with torch.inference_mode():
        ours = model(torch.from_numpy(x)).numpy()
    assert theirs.shape == (batch, len(CLASSES))
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_failed_parity_raises_and_keeps_previous_onnx(exported, monkeypatch):
    layout, _ = exported
    before = layout.onnx.read_bytes()
    # Perturb what the torch side gives: the exported graph is now wrong by 0.5 per logit.
    real = export.score_files

    def skewed(*args, **kwargs):
        logits = real(*args, **kwargs)
        return {**logits, "torch": logits["torch"] + 0.5}

    monkeypatch.setattr(export, "score_files", skewed)
    with pytest.raises(export.ExportError, match=r"parity check failed.*0\.5.*allowed 0\.0001"):
        export.run(tiny_params(), layout)
    assert layout.onnx.read_bytes() == before
    assert not list(layout.models.glob(".*tmp*")) and not list(layout.models.glob(".export-*"))


def test_threshold_below_zero_fails_without_model(tmp_path):
    layout = make_project(tmp_path, per_class=1)
    with pytest.raises(export.ExportError, match="max .Δlogit. = .*allowed -1"):
        export.run(tiny_params(max_abs_diff=-1.0), layout)
    assert not layout.onnx.exists()
    assert not layout.metrics("export").exists()


def test_unsupported_opset_is_a_clear_error(tmp_path):
    layout = make_project(tmp_path, per_class=1)
    with pytest.raises(export.ExportError, match="export.opset is 13"):
        export.run(tiny_params(opset=13), layout)


def test_foreign_onnx_is_not_a_graft_model(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
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


def test_providers_only_listed_ones_and_cpu_last(exported):
    layout, _ = exported
    import onnxruntime as ort

    listed = set(ort.get_available_providers())
    providers = available_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert set(providers) <= listed
    assert available_providers(prefer_gpu=False) == ["CPUExecutionProvider"]
    session = create_session(layout.onnx, threads=1)
    assert session.get_providers()[-1] == "CPUExecutionProvider"
