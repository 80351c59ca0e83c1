"""One optimisation step of the network strategies (graft.strategies.training's loop, and
`graft bench --train`): what it needs (`Step`, built by `make_step`: the model on its device,
AdamW over graft.strategies.trainable's parameter groups, the loss, AMP, L2-SP anchors), the
train-mode policy (BatchNorm frozen unless `bn_train`) and the update itself.

In a torchrun world (graft.core.distributed) `train_step` is given the whole global batch,
mixes it as one process would, and backpropagates this rank's share only, with a summed loss
scaled so that DistributedDataParallel's average over the ranks is the one-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from graft.core.config import FinetuneParams
from graft.core.device import amp_dtype, to_device
from graft.core.distributed import ONE_PROCESS, Ranks, wrap
from graft.strategies.batches import mix
from graft.strategies.trainable import l2sp_penalty, param_groups


@dataclass
class Step:
    """What one optimisation step needs."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # None: plain fp32
    rng: np.random.Generator  # mixup/cutmix draws
    mixup: float
    cutmix: float
    l2sp: float
    anchors: list[tuple[nn.Parameter, torch.Tensor]]  # (trainable backbone weight, pretrained copy)
    ranks: Ranks = ONE_PROCESS  # distributed: `model` is DDP-wrapped, `criterion` sums


def set_train_mode(model: nn.Module, bn_train: bool, frozen: list[nn.Module]) -> None:
    """Train mode (dropout on), except BatchNorm in eval mode, so its running statistics stay
    frozen, unless `bn_train`; BatchNorm inside frozen modules never updates."""
    model.train()
    for module in frozen:
        module.eval()
    if not bn_train:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_step(step: Step, x: torch.Tensor, y: torch.Tensor) -> float:
    """One AdamW update on a normalised batch (mixed when mixup/cutmix is on); returns the task
    loss (without L2-SP). Distributed, `x` is the whole global batch and this rank trains on its
    share (see the module docstring); the loss returned is then this rank's scaled share."""
    step.optimizer.zero_grad(set_to_none=True)
    x, y_a, y_b, lam = mix(x, y, step.mixup, step.cutmix, step.rng)
    scale = 1.0
    if step.ranks.distributed:
        scale = step.ranks.world / _total_weight(step.criterion, y_a)
        mine = step.ranks.share(len(y_a))
        x, y_a, y_b = x[mine], y_a[mine], y_b[mine]
    with torch.autocast(x.device.type, dtype=step.amp_dtype, enabled=step.amp_dtype is not None):
        logits = step.model(x)
        loss = step.criterion(logits, y_a)
        if lam < 1.0:
            loss = lam * loss + (1.0 - lam) * step.criterion(logits, y_b)
        if step.ranks.distributed:
            loss = loss * scale
    total = loss.float()
    if step.l2sp > 0:
        total = total + step.l2sp * l2sp_penalty(step.anchors)
    step.scaler.scale(total).backward()
    step.scaler.step(step.optimizer)
    step.scaler.update()
    return float(loss.detach())


def _total_weight(criterion: nn.Module, y: torch.Tensor) -> float:
    """What a mean-reduced `criterion` divides the summed loss of batch `y` by: the batch size,
    or with class weights the sum of the targets' weights (label smoothing included)."""
    weight = getattr(criterion, "weight", None)
    return float(len(y)) if weight is None else float(weight[y].sum())


def make_step(model: nn.Module, y_train: torch.Tensor, p: FinetuneParams, device: torch.device,
              n_classes: int, ranks: Ranks = ONE_PROCESS) -> Step:
    """Model on the device (graft.core.device), optimizer, loss, AMP and L2-SP anchors; in a
    torchrun world the model DDP-wrapped (SyncBatchNorm when BatchNorm trains) and a summing
    loss (train_step scales it)."""
    to_device(model, device)
    amp = amp_dtype(device, p.amp)
    head_ids = {id(q) for q in model.classifier.parameters()}
    anchors = [(q, q.detach().clone().float()) for q in model.parameters()
               if q.requires_grad and id(q) not in head_ids] if p.l2sp > 0 else []
    weight = class_weights(y_train, n_classes, p)
    if ranks.distributed and p.bn_train:  # GPUs only (graft.strategies.check_params)
        from timm.layers import convert_sync_batchnorm  # timm's BatchNormAct2d included

        model = convert_sync_batchnorm(model)
    return Step(
        model=wrap(model, ranks, device),
        criterion=nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device),
                                      label_smoothing=p.label_smoothing,
                                      reduction="sum" if ranks.distributed else "mean"),
        optimizer=torch.optim.AdamW(param_groups(model, p)),
        # loss scaling only for fp16: bf16 has fp32's exponent range
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        amp_dtype=amp,
        rng=np.random.default_rng(p.seed),
        mixup=p.mixup,
        cutmix=p.cutmix,
        l2sp=p.l2sp,
        anchors=anchors,
        ranks=ranks,
    )


def class_weights(y: torch.Tensor, n_classes: int, p: FinetuneParams) -> torch.Tensor | None:
    """'balanced': n / (k · n_c), as scikit-learn's class_weight='balanced'."""
    if p.class_weight == "none":
        return None
    counts = torch.bincount(y, minlength=n_classes).float()
    return len(y) / (n_classes * counts)
