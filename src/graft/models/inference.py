"""Batched forward passes of a torch model over image files, on CUDA when present."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from graft.core.device import pick_device, to_device, to_input
from graft.core.progress import Progress
from graft.data.images import DEFAULT_MAX_PIXELS, Preprocessing, decoded_batches


@torch.inference_mode()
def run_model(
    model: nn.Module,
    paths: Sequence[Path | str],
    preprocessing: Preprocessing,
    batch_size: int = 32,
    device: torch.device | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    label: str | None = None,
) -> np.ndarray:
    """Outputs of `model` (in eval mode) for every file, float32 (N, ...), in input order.

    Decoding the next batch runs in a thread while the current one is in the network. With a
    `label`, progress is shown (graft.core.progress).
    """
    device = device or pick_device()
    model = to_device(model.eval(), device)
    outputs = []
    with Progress(label or "", len(paths), "img", enabled=label is not None) as bar:
        for x in decoded_batches(paths, preprocessing, batch_size, max_pixels):
            outputs.append(model(to_input(torch.from_numpy(x), device)).float().cpu().numpy())
            bar.update(len(x))
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)
