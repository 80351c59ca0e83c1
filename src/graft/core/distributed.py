"""torch.distributed for the network strategies: who this process is, the process group, and the
`torchrun` launch of `finetune.nproc_per_node` processes on this machine.

A process started by torchrun finds RANK, LOCAL_RANK and WORLD_SIZE in its environment; any other
process is rank 0 of a world of one, and nothing here changes what it computes. The backend is
NCCL when torch sees CUDA (rank r on GPU LOCAL_RANK: graft.core.device.pick_device) and gloo on
the CPU. Only rank 0 writes outputs; every rank computes the same decisions from all-reduced
numbers, so none of them leaves the training loop early (that would deadlock the others).
torch is imported inside the functions, as in graft.core.device.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class LaunchError(ValueError):
    """torchrun's processes failed; their own messages are on stderr above this one."""


def launched() -> bool:
    """True in a process that torchrun started (whatever the world size)."""
    return "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0, the one process that writes outputs and metrics."""
    return rank() == 0


@dataclass(frozen=True)
class Ranks:
    """This process's place in the world: rank `rank` of `world` (1: no process group)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, n: int) -> slice:
        """This rank's rows of a batch of `n`: every world-th row from `rank`, so the shares
        differ by at most one row and together are the batch."""
        return slice(self.rank, n, self.world)

    def all_sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64); `values` itself in a world of one."""
        if not self.distributed:
            return values
        import torch
        import torch.distributed as dist

        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()


ONE_PROCESS = Ranks()  # no torchrun: rank 0 of 1


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """Under torchrun with WORLD_SIZE > 1, the default process group (NCCL with CUDA, else gloo)
    for the block, destroyed after it; otherwise ONE_PROCESS and nothing else."""
    if world_size() == 1:
        yield ONE_PROCESS
        return
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
        dist.barrier()  # no rank tears the group down while another still needs it
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel when `ranks` is distributed (gradients averaged over
    the ranks in backward; rank 0's weights broadcast at construction), else itself."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def launch(command: list[str], nproc: int) -> None:
    """Run `command` (arguments of `python -m`, e.g. ["graft.cli", "finetune", ...]) in `nproc`
    processes on this machine with torchrun (rendezvous on localhost, a free port). Their
    stdout is dropped (rank 0 writes the outputs) and their stderr passed on; when a process
    fails, LaunchError with the ranks' `error: ` lines instead of torchrun's report."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", *command]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode == 0:
        sys.stderr.write(proc.stderr)
        return
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    why = "; ".join(dict.fromkeys(e.removeprefix("error: ") for e in errors)) or (
        proc.stderr.strip().splitlines() or ["no message"])[-1]
    raise LaunchError(f"torchrun, {nproc} processes of `{' '.join(command)}` (exit "
                      f"{proc.returncode}): {why}")
