"""benchmarks/gpu/run.py, the script prepared for a lent GPU machine, runs every path on the CPU at
tiny sizes (`--tiny`): the throughput rows (the AMP ones skipped with the reason on a CPU) and a
few-shot fine-tuning run, written as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.fixtures import REPO


def test_the_gpu_script_runs_every_path_on_the_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GRAFT_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu/run.py"), "--tiny",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["config"]: row for row in result["throughput"]}
    assert rows["fp32 NCHW"]["images_per_s"] > 0 and rows["fp32 channels_last"]["steps"] > 0
    if result["device"] == "cpu":
        assert "CUDA only" in json.dumps(rows["amp channels_last"])
    assert 0.0 <= result["few_shot"]["best_val_accuracy"] <= 1.0
    assert "| fp32 NCHW |" in proc.stdout
