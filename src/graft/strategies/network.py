"""The strategies that train the network itself (graft.strategies.training's loop).

- `finetune`: from a zero-initialised head (all logits 0 at the start, so the first updates move
  the head only: its gradient into the backbone is Wᵀ(p − y) = 0), head at `lr`, backbone at
  `backbone_lr`.
- `lp_ft` (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): first the linear
  probe, fitted to convergence on the training rows only (C chosen on val; the validation rows
  stay unseen for early stopping), then every trainable weight, the head included, fine-tuned at
  the small `backbone_lr`. Starting from a good head keeps the first gradients from distorting
  the pretrained features, which is what a random head does.

Both freeze and decay EfficientNet-Lite blocks by name (graft.strategies.trainable): a `timm:`
backbone gets the feature strategies only. Under torchrun (`finetune.nproc_per_node`) both train
with DistributedDataParallel in the process group of graft.core.distributed; every rank fits the
same start (DDP broadcasts rank 0's weights anyway) and ends with the same weights.
"""

from __future__ import annotations

import torch

from graft.core.config import FinetuneParams
from graft.core.distributed import process_group
from graft.models.backbones import BACKBONES, create_model, is_timm
from graft.strategies.base import Curve, Fit, Inputs, Strategy
from graft.strategies.linear_probe import fit_probe, select_c
from graft.strategies.training import CURVE, Data, train


class NetworkStrategy(Strategy):
    """Trains a fresh pretrained network from the head `start` gives it."""

    def start(self, model: torch.nn.Module, p: FinetuneParams, inputs: Inputs) -> dict:
        """Initialise `model.classifier`; returns the strategy's report so far."""
        raise NotImplementedError

    def unsupported(self, backbone: str) -> str | None:
        if is_timm(backbone):
            return (f"needs an EfficientNet-Lite backbone ({', '.join(BACKBONES)}); the "
                    f"backbone is {backbone}")
        return None

    def fit(self, p: FinetuneParams, inputs: Inputs, budget_s: float | None = None) -> Fit:
        model = create_model(inputs.backbone, inputs.n_classes, weights_dir=inputs.weights_dir)
        report = self.start(model, p, inputs)
        images, y, t = inputs.images(), torch.from_numpy(inputs.y), inputs.is_train
        data = Data(images[t], y[t], images[~t], y[~t])
        with process_group() as ranks:
            history = train(model, data, inputs.pre, p, inputs.device, inputs.n_classes,
                            budget_s, ranks)
        rows = [[row[k] for k in CURVE] for row in history.rows]
        report |= {"epochs_run": history.epochs_run, "best_epoch": history.best_epoch,
                   "processes": ranks.world}
        return Fit(model, history.best_val_accuracy, history.train_accuracy, Curve(CURVE, rows),
                   p, report=report)


class Finetune(NetworkStrategy):
    """`finetune.strategy: finetune`: a zero head, every class equally likely at the start."""

    def start(self, model: torch.nn.Module, p: FinetuneParams, inputs: Inputs) -> dict:
        torch.nn.init.zeros_(model.classifier.weight)
        torch.nn.init.zeros_(model.classifier.bias)
        return {}


class LinearProbeThenFinetune(NetworkStrategy):
    """`finetune.strategy: lp_ft`: the linear probe's head, then fine-tuning."""

    def start(self, model: torch.nn.Module, p: FinetuneParams, inputs: Inputs) -> dict:
        feats, y, t = inputs.data.feats, inputs.y, inputs.is_train
        selection = select_c(feats[t], y[t], feats[~t], y[~t], p.c_grid, p.class_weight,
                             inputs.n_classes, p.seed)
        fit_probe(feats[t], y[t], selection.C, p.class_weight, inputs.n_classes).fold_into(
            model.classifier)
        return {"C": selection.C, "C_selection": selection.method}
