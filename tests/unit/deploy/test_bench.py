"""`graft bench`: every CPU runtime measured on the exported models, GPU rows skipped with a
reason on a machine without CUDA, JSON and table written; `--train` times real training steps."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

from graft.cli import app
from graft.core.layout import Layout
from graft.deploy.bench import BenchError, bench_inference, time_runs
from graft.deploy.bench_report import markdown, markdown_train
from graft.deploy.bench_train import bench_train


def test_time_runs_excludes_warmup_and_honours_min_iters():
    calls = []
    times = time_runs(lambda: calls.append(1), seconds=0.0, warmup=3, min_iters=4)
    assert len(calls) == 7 and len(times) == 4 and all(t >= 0 for t in times)


def test_inference_rows_on_the_exported_models(exported):
    layout, _ = exported
    report = bench_inference(layout, batch_size=4, seconds=0.0, warmup=1, min_iters=3,
                             threads=1)
    names = [r["runtime"] for r in report["rows"]]
    assert names[:3] == ["torch eager fp32 (CPU)", "onnxruntime fp32 (CPU)",
                         "onnxruntime int8 (CPU)"]
    for row in report["rows"]:
        assert 0 < row["p50_ms_batch1"] <= row["p95_ms_batch1"]
        assert row["images_per_s"] > 0 and row["batch_size"] == 4
    ratios = {"onnxruntime_fp32_vs_torch_eager", "onnxruntime_int8_vs_fp32"}
    if importlib.util.find_spec("openvino"):  # the [openvino] extra: its rows and ratios too
        ratios |= {"openvino_fp32_vs_onnxruntime_fp32", "openvino_int8_vs_onnxruntime_int8"}
    assert set(report["ratios"]) == ratios
    if not torch.cuda.is_available():
        assert report["skipped"]["onnxruntime fp32 (CUDA)"] == "no CUDA device on this machine"
    table = markdown(report)
    assert "| onnxruntime int8 (CPU) |" in table and "skipped" in table


def test_cli_bench_writes_metrics(exported, tmp_path):
    layout, _ = exported
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--root", str(layout.root), "--batch-size", "2",
                                      "--seconds", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| torch eager fp32 (CPU) |" in result.output
    assert [r["runtime"] for r in json.loads(out.read_text())["rows"]][:1] == [
        "torch eager fp32 (CPU)"]


def test_bench_without_export_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match=r"model\.onnx: not found; run the export stage"):
        bench_inference(Layout(tmp_path))


def test_train_bench_times_real_steps():
    report = bench_train(size=32, batch_size=2, seconds=0.0, warmup=0, min_iters=1)
    configs = [r["config"] for r in report["rows"]]
    if torch.cuda.is_available():
        assert configs == ["fp32 NCHW", "fp32 channels_last", "amp NCHW", "amp channels_last"]
    else:
        assert configs == ["fp32 NCHW", "fp32 channels_last"]
        assert report["skipped"] == ["amp NCHW: autocast is used on CUDA only",
                                     "amp channels_last: autocast is used on CUDA only"]
    assert all(r["images_per_s"] > 0 for r in report["rows"])
    assert "| fp32 NCHW |" in markdown_train(report)


def test_roofline_counts_conv_and_gemm_flops(tmp_path, monkeypatch):
    from torch import nn

    from graft.deploy.roofline import cpu_peak, graph_gflops
    from graft.models.onnx_graph import export_graph

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    export_graph(net, tmp_path / "tiny.onnx", 8, 17, "logits")
    macs = 4 * 8 * 8 * 3 * 3 * 3 + 256 * 2  # conv outputs × (C_in · kh · kw), then the Linear
    assert graph_gflops(tmp_path / "tiny.onnx") == pytest.approx(2 * macs / 1e9)
    monkeypatch.setenv("GRAFT_CPU_GHZ", "3.0")
    peak = cpu_peak()
    assert peak["ghz"] == 3.0 and peak["flops_per_cycle"] in (8, 16, 32, 64)
    assert peak["gflops"] == pytest.approx(peak["cores"] * 3.0 * peak["flops_per_cycle"], 0.01)
    assert "GRAFT_CPU_GHZ" in peak["how"]
