"""The early-stopping rule of Graft's training loops (the network strategies' and the small-CNN
baseline's): which epoch's weights to keep."""

from __future__ import annotations

import torch
from torch import nn


class BestEpoch:
    """The early-stopping rule of Graft's training loops (here and the small-CNN baseline): the
    best epoch has the highest val accuracy, ties broken by the lower val loss (with tens of
    validation images accuracy moves in coarse steps and ties are common). Keeps a CPU copy of
    the best weights."""

    def __init__(self) -> None:
        self.epoch, self.accuracy, self.stale = 0, None, 0  # stale: epochs since an improvement
        self.state: dict[str, torch.Tensor] | None = None
        self._score: tuple[float, float] | None = None

    def update(self, epoch: int, model: nn.Module, val_accuracy: float, val_loss: float) -> bool:
        """Record `epoch`'s scores; True (and a copy of the weights) when it is the best yet."""
        score = (val_accuracy, -val_loss)
        if self._score is not None and score <= self._score:
            self.stale += 1
            return False
        self._score, self.epoch, self.accuracy, self.stale = score, epoch, val_accuracy, 0
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True
