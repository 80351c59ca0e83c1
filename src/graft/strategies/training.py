"""The training loop of the network strategies (`finetune`, `lp_ft`): partial freezing, frozen
BatchNorm, L2-SP, layer-wise lr decay, label smoothing, AdamW with a cosine schedule, class-balanced
sampling and mixup/cutmix (graft.batches), early stopping on validation accuracy, mixed precision
on CUDA.

The defaults suit the few-shot regime, where naive full fine-tuning loses to a linear probe:
BatchNorm running statistics stay at their ImageNet values (a batch of 16 images estimates them
badly), the backbone learns ten times slower than the head, and L2-SP (Li et al. 2018, "Explicit
inductive bias for transfer learning with convolutional networks") pulls the trainable backbone
weights towards their pretrained values instead of towards zero. With `llrd` < 1 (layer-wise lr
decay, as in ULMFiT/BEiT) the lower, more generic blocks move less than the top ones.

`lp_ft` (Kumar et al. 2022) starts from a converged linear-probe head, so its head trains at the
same small `backbone_lr` as the body; `finetune` starts from a zero head trained at `lr`.

Under torchrun (`finetune.nproc_per_node`, graft.core.distributed) the same loop runs on every
rank and computes what one process computes, to float rounding: every rank draws the same global
batches, augments and mixes the whole global batch from the same seeded generators, then
forwards and backpropagates its share only (`Ranks.share`); a share's loss is its summed loss
over the global batch's total weight times the world size, so DistributedDataParallel's average
of the ranks' gradients is the one-process gradient, shares of unequal size included. Validation
is sharded and all-reduced, so every rank takes the same early-stopping decisions. BatchNorm
stays frozen by default; `bn_train` needs SyncBatchNorm, which needs GPUs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from graft.core.config import FinetuneParams
from graft.core.device import to_input
from graft.core.distributed import ONE_PROCESS, Ranks
from graft.core.progress import Progress
from graft.data.augment import augment_batch, build_augment
from graft.data.images import Preprocessing
from graft.strategies.batches import epoch_batches
from graft.strategies.early_stopping import BestEpoch
from graft.strategies.step import Step, make_step, set_train_mode, train_step
from graft.strategies.trainable import freeze

log = logging.getLogger(__name__)

CURVE = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")  # plots/finetune.csv


class BudgetExceeded(RuntimeError):
    """The first epoch says the whole run would not fit in the time it was given."""

    def __init__(self, estimate_s: float, budget_s: float) -> None:
        super().__init__(f"estimated {estimate_s:.0f} s (set-up + first epoch × epochs) > "
                         f"{budget_s:.0f} s")
        self.estimate_s, self.budget_s = estimate_s, budget_s

    def __reduce__(self) -> tuple:  # picklable with its arguments (it may cross processes)
        return type(self), (self.estimate_s, self.budget_s)


@dataclass
class Data:
    """Images decoded once: uint8 (N, 3, S, S) on the CPU, labels int64 (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class History:
    """One row per epoch (epoch, train_loss, val_loss, val_accuracy, lr: the head's at the
    epoch's start). Row 0 is the network before any update (probe head for lp_ft, zero head
    for finetune); its
    train_loss is measured like val_loss (eval mode, no augmentation), later ones are the mean
    loss of the epoch's augmented training batches."""

    rows: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    train_accuracy: float = float("nan")  # of the returned weights, eval mode, no augmentation

    @property
    def epochs_run(self) -> int:
        return len(self.rows) - 1


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, pre: Preprocessing, batch_size: int,
    device: torch.device, amp: torch.dtype | None = None, ranks: Ranks = ONE_PROCESS,
) -> tuple[float | None, float | None]:
    """(mean cross-entropy, accuracy) in eval mode without augmentation; (None, None) for no
    images. Distributed, each rank scores its share and the sums are all-reduced, so every rank
    gets the same numbers."""
    n = len(y)
    if n == 0:
        return None, None
    model.eval()
    mine = ranks.share(n)
    x, y = x[mine], y[mine]
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        xb = to_input(x[i : i + batch_size], device)
        yb = y[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(pre.normalise(xb)).float()
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    loss_sum, correct = ranks.all_sum([loss_sum, correct])
    return loss_sum / n, correct / n


def train(
    model: nn.Module, data: Data, pre: Preprocessing, p: FinetuneParams, device: torch.device,
    n_classes: int, budget_s: float | None = None, ranks: Ranks = ONE_PROCESS,
) -> History:
    """Train `model` in place and leave it holding the weights of the best validation epoch
    (epoch 0, the untouched start, included: training never returns a network worse on
    validation than the head it started from). Stops after `patience` epochs without
    improvement. Without validation rows: all epochs, last weights. With `budget_s`, raises
    BudgetExceeded after the first epoch when the set-up plus `epochs` epochs like it would
    exceed it. `ranks`: this process's place in a torchrun world (graft.core.distributed)."""
    started = time.perf_counter()
    torch.manual_seed(p.seed)  # dropout and augmentation draw from the global generator
    np.random.seed(p.seed)
    frozen = freeze(model, p.freeze_blocks)
    step = make_step(model, data.y_train, p, device, n_classes, ranks)
    data = _resident(data, device)
    epoch = Epoch(step, data, pre, p, frozen, device)

    def scores(x: torch.Tensor, y: torch.Tensor) -> tuple[float | None, float | None]:
        return evaluate(model, x, y, pre, p.batch_size, device, step.amp_dtype, ranks)

    history, best = History(), BestEpoch()
    train_loss, _ = scores(data.x_train, data.y_train)
    val_loss, val_acc = scores(data.x_val, data.y_val)
    history.rows.append(_row(0, train_loss, val_loss, val_acc, None))
    if val_acc is not None:
        best.update(0, model, val_acc, val_loss)
    with Progress("finetune: training", p.epochs, "epoch", enabled=ranks.rank == 0) as bar:
        for n in range(1, p.epochs + 1):
            lr = step.optimizer.param_groups[0]["lr"]  # the head's, at the start of the epoch
            epoch_start = time.perf_counter()
            train_loss = epoch.run()
            val_loss, val_acc = scores(data.x_val, data.y_val)
            if budget_s is not None and n == 1:  # set-up so far + the other epochs like this one
                now = time.perf_counter()
                estimate = now - started + (p.epochs - 1) * (now - epoch_start)
                if estimate > budget_s:
                    raise BudgetExceeded(estimate, budget_s)
            history.rows.append(_row(n, train_loss, val_loss, val_acc, lr))
            bar.update(loss=train_loss, val_accuracy=val_acc)
            if ranks.rank == 0:
                log.info("epoch %d: %s", n, history.rows[-1])
            if val_acc is None:
                continue
            if not best.update(n, model, val_acc, val_loss) and best.stale >= p.patience:
                log.info("early stop after epoch %d: no val improvement in %d", n, best.stale)
                break
    if best.state is not None:
        model.load_state_dict(best.state)
        history.best_epoch, history.best_val_accuracy = best.epoch, best.accuracy
    else:  # no validation rows: the last epoch's weights
        history.best_epoch = history.epochs_run
    history.train_accuracy = scores(data.x_train, data.y_train)[1]
    model.to(memory_format=torch.contiguous_format)
    return history


class Epoch:
    """One pass over the training images: batches in `sampler` order, augmented, normalised,
    one AdamW step each, the cosine schedule stepped per batch."""

    def __init__(self, step: Step, data: Data, pre: Preprocessing, p: FinetuneParams,
                 frozen: list[nn.Module], device: torch.device) -> None:
        self.step, self.data, self.pre, self.p, self.frozen, self.device = (
            step, data, pre, p, frozen, device)
        self.order = torch.Generator().manual_seed(p.seed)  # batch order
        self.sizes = _batch_sizes(len(data.y_train), p.batch_size, drop_single=p.bn_train)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            step.optimizer, T_max=p.epochs * len(self.sizes))
        self.augment = build_augment(pre.size) if p.augment else None

    def run(self) -> float:
        """Train one epoch; the mean training loss over its images."""
        set_train_mode(self.step.model, self.p.bn_train, self.frozen)
        loss_sum = 0.0  # summed over images, for the epoch's mean
        y = self.data.y_train
        for idx in epoch_batches(y.cpu(), self.sizes, self.p.sampler, self.order):
            xb = to_input(self.data.x_train[idx], self.device)
            if self.augment is not None:
                xb = augment_batch(xb, self.augment)
            yb = y[idx].to(self.device, non_blocking=True)
            loss_sum += train_step(self.step, self.pre.normalise(xb), yb) * len(idx)
            self.scheduler.step()
        ranks = self.step.ranks
        if ranks.distributed:  # the ranks' scaled shares average to the global batch's loss
            loss_sum = ranks.all_sum([loss_sum])[0] / ranks.world
        return loss_sum / sum(self.sizes)


def _batch_sizes(n: int, batch_size: int, drop_single: bool) -> list[int]:
    """Sizes of one epoch's batches; a trailing batch of one image is dropped when BatchNorm
    trains (the batch statistics of one image at a 1×1 feature map are undefined)."""
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    if drop_single and len(sizes) > 1 and sizes[-1] == 1:
        sizes.pop()
    return sizes


def _resident(data: Data, device: torch.device, max_fraction: float = 0.25) -> Data:
    """On CUDA, the uint8 images moved to the GPU once when they take at most `max_fraction`
    of its free memory (a few-shot set is megabytes), so no epoch waits on host copies and
    augmentation runs on the GPU; otherwise (and on the CPU) unchanged."""
    if device.type != "cuda":
        return data
    free_bytes, _ = torch.cuda.mem_get_info(device)
    needed = sum(t.numel() * t.element_size() for t in (data.x_train, data.x_val))
    if needed > max_fraction * free_bytes:
        log.info("images stay on the host: %d MB > %.0f%% of free GPU memory",
                 needed >> 20, 100 * max_fraction)
        return data
    return Data(data.x_train.to(device), data.y_train.to(device), data.x_val.to(device),
                data.y_val.to(device))


def _row(epoch: int, train_loss: float, val_loss: float | None, val_acc: float | None,
         lr: float | None) -> dict:
    return {"epoch": epoch, "train_loss": round(train_loss, 6),
            "val_loss": None if val_loss is None else round(val_loss, 6),
            "val_accuracy": val_acc, "lr": lr if lr is None else float(f"{lr:.6g}")}

