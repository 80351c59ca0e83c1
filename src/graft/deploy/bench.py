"""`graft bench`: inference latency and throughput of the exported models, and training speed.

Inference (`bench_inference`): p50/p95 latency at batch 1 and throughput at batch N (default 32)
for torch eager (models/model.pt), onnxruntime fp32 (model.onnx) and INT8 (model.int8.onnx) on
the CPU, plus, on a CUDA machine, torch with AMP + channels_last and onnxruntime's CUDA and
TensorRT providers where this onnxruntime build has them. Rows that cannot run here are listed
under `skipped` with the reason. Training (`bench_train`): images/s of full fine-tuning steps
(forward, backward, AdamW) for fp32 vs AMP and NCHW vs channels_last; AMP rows only on CUDA.
Warm-up iterations are never timed. Other processes on the same cores lower every figure.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.core import VERSION
from graft.core.device import amp_dtype, physical_cores, to_device, to_input
from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.core.progress import Progress
from graft.data.manifest import absolute_paths, read_manifest
from graft.deploy.onnx_model import OnnxClassifier, available_providers
from graft.deploy.publish import check_set, set_files
from graft.deploy.roofline import cpu_peak, graph_gflops
from graft.models.checkpoint import deployed_checkpoint, load_checkpoint

Runner = Callable[[np.ndarray], Any]  # float32 (N, 3, S, S) → anything; returns when done


class BenchError(ValueError):
    """A benchmark that cannot run (no model yet, bad setting); names the file or option."""


def time_runs(fn: Callable[[], Any], seconds: float, warmup: int, min_iters: int) -> list[float]:
    """Wall-clock seconds of each timed call of `fn`, after `warmup` untimed calls; calls go on
    until `seconds` have passed and at least `min_iters` were timed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(name: str, runner: Runner, x: np.ndarray, seconds: float, warmup: int,
            min_iters: int) -> dict[str, Any]:
    """One table row: latency at batch 1 (p50, p95 in ms) and images/s at batch len(x)."""
    one = x[:1]
    lat = np.asarray(time_runs(lambda: runner(one), seconds, warmup, min_iters)) * 1000
    tput = time_runs(lambda: runner(x), seconds, warmup, min_iters)
    return {"runtime": name, "p50_ms_batch1": round(float(np.percentile(lat, 50)), 2),
            "p95_ms_batch1": round(float(np.percentile(lat, 95)), 2),
            "batch_size": len(x), "images_per_s": round(len(x) / statistics.median(tput), 1),
            "iterations": [len(lat), len(tput)]}


def bench_inference(layout: Layout, batch_size: int = 32, seconds: float = 10.0,
                    warmup: int = 3, min_iters: int = 5,
                    threads: int | None = None) -> dict[str, Any]:
    """Every runtime that can run here, on real test images of the project's manifest."""
    if not layout.onnx.exists():
        raise BenchError(f"{layout.onnx}: not found; run the export stage first")
    # every row must time the same network: one export's set, from the checkpoint beside it
    source = deployed_checkpoint(layout)
    check_set(set_files(layout.models), sha256_file(source))
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    fp32 = OnnxClassifier(layout.onnx, providers=["CPUExecutionProvider"], threads=threads)
    x = _sample(layout, fp32.preprocessing, batch_size)
    runners, skipped = _runners(layout, source, threads)
    load_before = round(os.getloadavg()[0], 2)
    rows = []
    with Progress("bench", len(runners), "runtime") as bar:
        for name, run in runners.items():
            rows.append(measure(name, run, x, seconds, warmup, min_iters))
            bar.update(last=f"{name} {rows[-1]['images_per_s']} img/s")
    base = {r["runtime"]: r["images_per_s"] for r in rows}
    eager, ort32 = base.get("torch eager fp32 (CPU)"), base.get("onnxruntime fp32 (CPU)")
    ratios = {}
    if eager and ort32:
        ratios["onnxruntime_fp32_vs_torch_eager"] = round(ort32 / eager, 2)
    for name in ("fp32", "int8"):
        ort, ov = base.get(f"onnxruntime {name} (CPU)"), base.get(f"openvino {name} (CPU)")
        if ort and ov:
            ratios[f"openvino_{name}_vs_onnxruntime_{name}"] = round(ov / ort, 2)
    if ort32 and base.get("onnxruntime int8 (CPU)"):
        ratios["onnxruntime_int8_vs_fp32"] = round(base["onnxruntime int8 (CPU)"] / ort32, 2)
    roofline = None
    if ort32:
        gflop, peak = graph_gflops(layout.onnx), cpu_peak()
        roofline = {"gflop_per_image": round(gflop, 4), "peak": peak,
                    "fp32_gflops": round(ort32 * gflop, 1),
                    "fp32_percent_of_peak": round(100 * ort32 * gflop / peak["gflops"], 1)}
    return {"rows": rows, "ratios": ratios, "roofline": roofline, "skipped": skipped,
            "threads": threads,
            "image_size": fp32.preprocessing.size, "backbone": fp32.metadata["backbone"],
            "machine": machine(load_before),
            "settings": {"seconds": seconds, "warmup": warmup, "min_iters": min_iters}}


def _runners(layout: Layout, source: Path, threads: int
             ) -> tuple[dict[str, Runner], dict[str, str]]:
    """name → runner for every runtime available here; name → reason for the others."""
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    model, _ = load_checkpoint(source)

    def eager(xb: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(xb))

    runners["torch eager fp32 (CPU)"] = eager
    for name, path in (("fp32", layout.onnx), ("int8", layout.onnx_int8)):
        if path.exists():
            session = OnnxClassifier(path, providers=["CPUExecutionProvider"], threads=threads)
            runners[f"onnxruntime {name} (CPU)"] = session.logits
        else:
            skipped[f"onnxruntime {name} (CPU)"] = f"{path} not found (export.{name}: false?)"
    runners_ov, skipped_ov = _openvino_runners(layout, threads)
    runners |= runners_ov
    skipped |= skipped_ov
    gpu_rows = ("torch AMP channels_last (CUDA)", "onnxruntime fp32 (CUDA)",
                "onnxruntime fp16 (CUDA)", "onnxruntime fp32 (TensorRT)")
    if not torch.cuda.is_available():
        skipped.update(dict.fromkeys(gpu_rows, "no CUDA device on this machine"))
        return runners, skipped
    runners[gpu_rows[0]] = _torch_cuda(model)
    listed = available_providers()
    for row, provider, path in ((gpu_rows[1], "CUDAExecutionProvider", layout.onnx),
                                (gpu_rows[2], "CUDAExecutionProvider", layout.onnx_fp16),
                                (gpu_rows[3], "TensorrtExecutionProvider", layout.onnx)):
        if provider not in listed:
            skipped[row] = f"this onnxruntime build lacks {provider} (install onnxruntime-gpu)"
        elif not path.exists():
            skipped[row] = f"{path} not found"
        else:
            runners[row] = OnnxClassifier(path, providers=[provider, "CPUExecutionProvider"]).logits
    return runners, skipped


def _openvino_runners(layout: Layout, threads: int) -> tuple[dict[str, Runner], dict[str, str]]:
    """The same .onnx files in OpenVINO on the CPU (f32 maths, as onnxruntime's: its default
    on CPUs with bf16 units would be bf16, another model), when the `openvino` extra is in."""
    names = {"fp32": layout.onnx, "int8": layout.onnx_int8}
    try:
        import openvino as ov
    except ImportError:
        why = "openvino is not installed (pip install -e '.[openvino]')"
        return {}, {f"openvino {name} (CPU)": why for name in names}
    core, runners = ov.Core(), {}
    for name, path in names.items():
        if path.exists():
            compiled = core.compile_model(str(path), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
            request = compiled.create_infer_request()
            runners[f"openvino {name} (CPU)"] = lambda xb, r=request: r.infer({0: xb})[0]
    return runners, {}


def _torch_cuda(model: torch.nn.Module) -> Runner:
    cuda = torch.device("cuda")
    net = to_device(model.eval(), cuda)
    dtype = amp_dtype(cuda)

    def run(xb: np.ndarray) -> Any:
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            return net(to_input(torch.from_numpy(xb), cuda)).float().cpu()

    return run


def _sample(layout: Layout, pre: Any, batch_size: int) -> np.ndarray:
    """`batch_size` real test images of the manifest (repeated when there are fewer)."""
    df = read_manifest(layout.manifest)
    paths = absolute_paths(df[df["split"] == "test"].head(batch_size), layout.manifest)
    if not paths:
        raise BenchError(f"{layout.manifest}: no test images to benchmark on")
    x = pre.load(paths)
    return np.ascontiguousarray(np.resize(x, (batch_size, *x.shape[1:])))


def machine(load_before: float) -> dict[str, Any]:
    """Where the figures were taken (the load average says how busy the cores were)."""
    import onnxruntime

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1min_before": load_before,
            "load_average_1min_after": round(os.getloadavg()[0], 2),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "graft": VERSION}
