"""The one device, precision and CPU-thread policy of Graft's torch and onnxruntime code.

CUDA when torch sees a GPU, else the CPU. Mixed precision (autocast) only on CUDA: bf16 where the
GPU supports it (fp32's exponent range: no loss scaling), else fp16 with a GradScaler. On CUDA,
cudnn autotuning and channels_last. On the CPU, one intra-op thread per physical core: SMT
siblings share the FMA units and only add contention. torch is imported inside the functions:
`graft predict` and the bundle run on onnxruntime alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device() -> torch.device:
    """CUDA when torch sees a GPU (under torchrun: GPU LOCAL_RANK, one per process), else the
    CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")  # set by torchrun (graft.core.distributed)
    return torch.device("cuda", int(local)) if local is not None else torch.device("cuda")


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for `device`, or None for plain fp32 (the CPU, or amp off)."""
    import torch

    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` on `device`; on CUDA also channels_last, with cudnn autotuning on (inputs have one
    fixed size, so the autotuned kernels pay off)."""
    import torch

    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    return model


def to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device`: from pinned host memory with an asynchronous copy, channels_last on
    CUDA; unchanged on the CPU."""
    import torch

    if device.type != "cuda":
        return x
    if x.device.type != "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last)


def physical_cores() -> int:
    """Physical cores, the logical count where psutil cannot tell."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    return cores or os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU intra-op threads set to `n` for the block, then restored. Small models (the
    32-px baseline CNN) run faster on one thread, and a fixed count makes their float
    reductions, and so their results, the same on every machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
