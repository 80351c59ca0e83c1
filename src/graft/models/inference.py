"""Batched forward passes of a torch model over image files, on CUDA when present."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graft.core.device import pick_device, to_device, to_input
from graft.data.images import DEFAULT_MAX_PIXELS, Preprocessing


@torch.inference_mode()
def run_model(
    model: nn.Module,
    paths: Sequence[Path | str],
    preprocessing: Preprocessing,
    batch_size: int = 32,
    device: torch.device | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Outputs of `model` (in eval mode) for every file, float32 (N, ...), in input order.

    Decoding the next batch runs in a thread while the current one is in the network.
    """
    device = device or pick_device()
    model = to_device(model.eval(), device)
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    outputs = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(preprocessing.load, batches[0], max_pixels) if batches else None
        for i in range(len(batches)):
            x = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(preprocessing.load, batches[i + 1], max_pixels)
            outputs.append(model(to_input(torch.from_numpy(x), device)).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)
