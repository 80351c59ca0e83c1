"""`graft bench --train`: fine-tuning speed in images/s, through the finetune stage's own step.

Each row times full training steps (uint8 batch already on the device → normalise → forward,
backward, AdamW: `step.train_step`) for one (precision, memory format) pair: fp32 and AMP
(bf16, or fp16 with loss scaling, CUDA only), NCHW and channels_last. Synthetic uint8 images:
speed does not depend on the pixels. Warm-up steps (cudnn autotuning included) are not timed.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.device import amp_dtype, pick_device
from graft.deploy.bench import machine, time_runs
from graft.models.backbones import create_model, get_spec
from graft.strategies.step import Step, train_step


def bench_train(backbone: str = "efficientnet_lite0", size: int = 224, batch_size: int = 32,
                seconds: float = 10.0, warmup: int = 3, min_iters: int = 5,
                n_classes: int = 10) -> dict[str, Any]:
    """Images/s of training steps for each configuration that can run on this machine."""
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size, as in training
    pre = get_spec(backbone).preprocessing(size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, n_classes, (batch_size,), generator=gen)
    x, y = x.to(device), y.to(device)  # kept on the device, as training keeps small datasets
    amp = amp_dtype(device)
    load_before = round(os.getloadavg()[0], 2)
    rows, skipped = [], []
    for precision in ("fp32", "amp"):
        for layout in ("NCHW", "channels_last"):
            name = f"{precision} {layout}"
            if precision == "amp" and amp is None:
                skipped.append(f"{name}: autocast is used on CUDA only")
                continue
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            step = _step(backbone, n_classes, device, fmt,
                         amp if precision == "amp" else None)
            xb = x.contiguous(memory_format=fmt)

            def one(step: Step = step, xb: torch.Tensor = xb) -> None:
                train_step(step, pre.normalise(xb), y)  # returns a float: synchronises CUDA

            times = time_runs(one, seconds, warmup, min_iters)
            rows.append({"config": name, "device": device.type, "batch_size": batch_size,
                         "images_per_s": round(batch_size / statistics.median(times), 1),
                         "iterations": len(times)})
    return {"backbone": backbone, "image_size": size, "rows": rows, "skipped": skipped,
            "amp_dtype": str(amp).replace("torch.", "") if amp else None,
            "machine": machine(load_before),
            "settings": {"seconds": seconds, "warmup": warmup, "min_iters": min_iters}}


def _step(backbone: str, n_classes: int, device: torch.device, fmt: torch.memory_format,
          amp_dtype: torch.dtype | None) -> Step:
    torch.manual_seed(0)
    model = create_model(backbone, n_classes, pretrained=False).to(device).train()
    model = model.to(memory_format=fmt)
    return Step(model=model, criterion=nn.CrossEntropyLoss(),
                optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                amp_dtype=amp_dtype, rng=np.random.default_rng(0), mixup=0.0, cutmix=0.0,
                l2sp=0.0, anchors=[])
