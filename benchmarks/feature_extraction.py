"""Feature-extraction speed on the CPU: torch eager vs onnxruntime fp32, images per second.

The pooled-feature network (`create_model(backbone, num_classes=0)`) runs on one batch of real
photographs (scikit-learn's sample images, preprocessed by graft.data.images, tiled to the batch
size). Warm-up iterations are excluded; then iterations run until `--seconds` have passed (at
least `--min-iters`). Prints a markdown table and writes the figures as JSON.

    python benchmarks/feature_extraction.py --backbone efficientnet_lite0 --size 224 --seconds 20

Run it on an otherwise idle machine: other processes on the same cores lower every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import graft
from graft.core.device import physical_cores
from graft.core.files import write_json
from graft.deploy.bench import time_runs  # the one timing loop, shared with `graft bench`
from graft.deploy.onnx_export import to_onnx
from graft.deploy.onnx_model import create_session
from graft.models.backbones import create_model, get_spec


def sample_batch(backbone: str, size: int, batch_size: int) -> np.ndarray:
    """Real photographs (china.jpg, flower.jpg) as the network's float32 input, tiled to N."""
    from sklearn.datasets import load_sample_images  # shipped inside scikit-learn: no network

    preprocessing = get_spec(backbone).preprocessing(size)
    images = [preprocessing.to_array(Image.fromarray(a)) for a in load_sample_images().images]
    return np.stack([images[i % len(images)] for i in range(batch_size)])


def summarise(name: str, times: list[float], batch_size: int, threads: int) -> dict[str, Any]:
    per_second = [batch_size / t for t in times]
    return {
        "runtime": name,
        "batch_size": batch_size,
        "threads": threads,
        "iterations": len(times),
        "images_per_s_median": round(statistics.median(per_second), 1),
        "images_per_s_min": round(min(per_second), 1),
        "images_per_s_max": round(max(per_second), 1),
        "ms_per_batch_median": round(1000 * statistics.median(times), 1),
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    load_before = round(os.getloadavg()[0], 2)  # other processes on these cores slow us down
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    x = sample_batch(args.backbone, args.size, args.batch_size)
    model = create_model(args.backbone, num_classes=0, pretrained=True).eval()
    xt = torch.from_numpy(x)

    def torch_eager() -> np.ndarray:
        with torch.inference_mode():
            return model(xt).numpy()

    results = [summarise("torch eager fp32",
                         time_runs(torch_eager, args.seconds, args.warmup, args.min_iters),
                         args.batch_size, threads)]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.onnx"
        to_onnx(model, path, args.size, args.opset, output_name="features")
        session = create_session(path, providers=["CPUExecutionProvider"], threads=threads)

        def onnxruntime_fp32() -> np.ndarray:
            return session.run(None, {"image": x})[0]

        max_diff = float(np.abs(onnxruntime_fp32() - torch_eager()).max())
        results.append(summarise(
            "onnxruntime fp32 (CPU EP, ORT_ENABLE_ALL)",
            time_runs(onnxruntime_fp32, args.seconds, args.warmup, args.min_iters),
            args.batch_size, threads))

    return {
        "backbone": args.backbone,
        "image_size": args.size,
        "feature_dim": int(torch_eager().shape[1]),
        "max_abs_diff_features": max_diff,  # torch vs onnxruntime on the same batch
        "results": results,
        "machine": {
            "cpu": _cpu_name(),
            "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(),
            "load_average_1min_before": load_before,
            "load_average_1min_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "graft": graft.__version__,
        },
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "min_iters": args.min_iters},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['backbone']} at {report['image_size']} px, {report['feature_dim']}-d features, "
        f"{report['machine']['cpu']} (max |Δfeature| torch vs ORT "
        f"{report['max_abs_diff_features']:.2e})",
        "",
        "| runtime | batch | threads | img/s (median) | img/s (min–max) | ms/batch | iterations |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['runtime']} | {r['batch_size']} | {r['threads']} | "
            f"{r['images_per_s_median']} | {r['images_per_s_min']}–{r['images_per_s_max']} | "
            f"{r['ms_per_batch_median']} | {r['iterations']} |"
        )
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per runtime")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--min-iters", type=int, default=5)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/feature_extraction.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = benchmark(args)
    print(markdown(report))
    write_json(args.out, report)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
