"""graft.core.layout: every project path hangs off the root, spelled in one place."""

from __future__ import annotations

import pytest

from graft.core.layout import STAGES, Layout


def test_every_path_is_under_the_root(tmp_path) -> None:
    layout = Layout(tmp_path)
    assert layout.manifest == tmp_path / "data" / "prepared" / "manifest.csv"
    assert layout.report("ingest.json") == tmp_path / "reports" / "ingest.json"
    assert layout.retrain_log("dvc") == tmp_path / "reports" / "retrain-dvc.log"
    assert layout.plot("finetune.csv") == tmp_path / "plots" / "finetune.csv"
    assert [layout.metrics(s) for s in STAGES] == [
        layout.metrics_dir / f"{s}.json" for s in STAGES]
    assert layout.metrics_dir == tmp_path / "metrics" and layout.rank.parent == layout.metrics_dir
    assert layout.bench() == layout.metrics_dir / "bench.json"
    assert layout.bench(train=True) == layout.metrics_dir / "bench_train.json"
    assert [layout.onnx_variant(p) for p in ("fp32", "int8", "fp16")] == [
        layout.onnx, layout.onnx_int8, layout.onnx_fp16]


def test_unknown_stage_and_precision_name_the_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown metrics 'rank'; they are ingest"):
        Layout(tmp_path).metrics("rank")
    with pytest.raises(ValueError, match="unknown precision 'int4'; one of fp32, int8, fp16"):
        Layout(tmp_path).onnx_variant("int4")
