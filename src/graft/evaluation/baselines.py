"""Baselines that see no pretrained weights, to tell whether transfer learning paid off.

Both learn from the same training images as the model (val only to pick a setting or an epoch,
as the model does) at a small raw-pixel resolution, and return class probabilities on the test
images, so that the evaluate stage scores them exactly as it scores the model:

- `pixels_logreg`: logistic regression on standardised raw pixels, C chosen on val.
- `small_cnn`: a three-block CNN trained from scratch with light augmentation.

Each result carries its network (graft.models.scratch) on the same input the exported models
take, and the probabilities are that module's, so when `evaluate.on_negative_transfer:
use_baseline` ships a baseline, what ships is what was scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from graft.core.config import EvaluateParams
from graft.core.device import torch_threads
from graft.core.progress import Progress, track
from graft.data.manifest import absolute_paths, encode_labels
from graft.models.scratch import PixelsLinear, SmallCNN, preprocessing
from graft.strategies.early_stopping import BestEpoch

BASELINES = ("pixels_logreg", "small_cnn")


class BaselineError(ValueError):
    """A manifest the baselines cannot be trained on; the message names the file."""


@dataclass
class Split:
    """Images (N, 3, S, S) float32 and integer labels (N,) of one manifest split."""

    x: np.ndarray
    y: np.ndarray


@dataclass
class BaselineResult:
    proba: np.ndarray  # (n_test, k) class probabilities on the test split
    info: dict[str, Any] = field(default_factory=dict)  # the setting or epoch chosen on val
    model: nn.Module | None = None  # image (N, 3, S, S) → logits; what `proba` came from


def load_split(paths: Sequence[Path | str], labels: np.ndarray, size: int) -> Split:
    """Decode `paths` with the shared image code at size×size, pixels in [-1, 1]."""
    pre = preprocessing(size)
    x = pre.load(paths) if len(paths) else np.zeros((0, 3, size, size), np.float32)
    return Split(x, np.asarray(labels, np.int64))


def train_baselines(p: EvaluateParams, df: pd.DataFrame, manifest: Path, names: list[str],
                    device: torch.device) -> dict[str, BaselineResult]:
    """Fit both baselines on train (val for selection) and predict the test split."""
    splits = {}
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        labels = encode_labels(part["label"], names, manifest, split, "the model")
        splits[split] = load_split(absolute_paths(part, manifest), labels,
                                             p.baseline_image_size)
    if len(splits["train"].y) == 0:
        raise BaselineError(f"{manifest}: no training images; baselines need the train split")
    tr, va, te, k = splits["train"], splits["val"], splits["test"], len(names)
    return {
        "pixels_logreg": pixels_logreg(tr, va, te, k, p.logreg_c_grid, p.seed),
        "small_cnn": small_cnn(tr, va, te, k, p.cnn_epochs, p.cnn_batch_size,
                                         p.cnn_lr, p.cnn_weight_decay, p.seed, device),
    }



def pixels_logreg(train: Split, val: Split, test: Split, k: int, c_grid: Sequence[float],
                  seed: int) -> BaselineResult:
    """Multinomial logistic regression on flattened, standardised pixels.

    C (inverse L2 strength) is the grid value with the best val accuracy, the smallest C on ties
    (the most regularised); with no val images it is 1.0, sklearn's default. The final model is
    fitted on train only.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    def fit(c: float) -> Any:
        model = make_pipeline(StandardScaler(),
                              LogisticRegression(C=c, max_iter=2000, random_state=seed))
        # One BLAS thread: these products are too small to share, and a threaded BLAS on a busy
        # 2-core machine ran 50-100× slower (spinning threads) than a single one.
        with threadpool_limits(limits=1, user_api="blas"):
            return model.fit(_flat(train.x), train.y)

    if len(val.y) and len(c_grid):
        scored = []
        for c in track(sorted(c_grid), "evaluate: pixels_logreg baseline", unit="C"):
            model = fit(c)
            scored.append((float((model.predict(_flat(val.x)) == val.y).mean()), -c, model))
        val_acc, neg_c, model = max(scored, key=lambda s: (s[0], s[1]))
        info = {"C": -neg_c, "val_accuracy": val_acc}
    else:
        model, info = fit(1.0), {"C": 1.0, "val_accuracy": None}
    net = _as_network(model, k, train.x.shape[-1])
    logits = torch.from_numpy(_predict(net, test.x, 256, torch.device("cpu")))
    return BaselineResult(torch.softmax(logits.double(), dim=1).numpy(), info, net)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


ABSENT_LOGIT = -1e4  # a class with no training image: probability 0 after the softmax


def _as_network(pipeline: Any, k: int, size: int) -> PixelsLinear:
    """The fitted StandardScaler + LogisticRegression folded into `PixelsLinear`. sklearn keeps
    one row for two classes (the logit of class 1); ±½ of it gives the same softmax."""
    scaler, clf = pipeline[0], pipeline[-1]
    w, b = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:
        w, b = np.vstack([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    weight = np.zeros((k, w.shape[1]))
    bias = np.full(k, ABSENT_LOGIT)
    weight[clf.classes_], bias[clf.classes_] = w / scaler.scale_, b - (w / scaler.scale_) @ \
        scaler.mean_
    net = PixelsLinear(size, k)
    with torch.no_grad():
        net.linear.weight.copy_(torch.as_tensor(weight))
        net.linear.bias.copy_(torch.as_tensor(bias))
    return net.eval()


def small_cnn(train: Split, val: Split, test: Split, k: int, epochs: int, batch_size: int,
              lr: float, weight_decay: float, seed: int,
              device: torch.device | None = None) -> BaselineResult:
    """Train `SmallCNN` from scratch; keep the epoch with the best val accuracy (lower val loss
    breaks ties; the last epoch when there is no val split).

    Budget: `epochs` full passes over train with AdamW and a cosine schedule to zero, batches of
    `batch_size`, random crop (zero padding of size/8 pixels) and horizontal flip. The defaults
    (60 epochs, 32 images) give 240 optimiser steps for 100 training images: enough for the
    training loss to flatten on 10-shot Fashion-MNIST at 32 px. On the CPU it trains on one
    thread: 3× faster than two here (a 32-px CNN is too small to share), and the result no longer
    depends on the machine's core count (1 and 2 threads gave 68.75% and 69.45% on the demo).
    """
    device = device or torch.device("cpu")
    with torch_threads(1) if device.type == "cpu" else contextlib.nullcontext():
        return _train_small_cnn(train, val, test, k, epochs, batch_size, lr, weight_decay, seed,
                                device)


def _train_small_cnn(train: Split, val: Split, test: Split, k: int, epochs: int, batch_size: int,
                     lr: float, weight_decay: float, seed: int, device: torch.device
                     ) -> BaselineResult:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(k).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(train.y) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    x_train, y_train = torch.from_numpy(train.x), torch.from_numpy(train.y)
    loss_fn = nn.CrossEntropyLoss()
    best = BestEpoch()
    with Progress("evaluate: small_cnn baseline", epochs, "epoch") as bar:
        for epoch in range(1, epochs + 1):
            model.train()
            for batch in torch.randperm(len(y_train), generator=gen).split(batch_size):
                if len(batch) < 2:
                    continue  # BatchNorm cannot train on a batch of one
                xb = _augment(x_train[batch], gen).to(device)
                loss = loss_fn(model(xb), y_train[batch].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if len(val.y):
                logits = _predict(model, val.x, batch_size * 4, device)
                val_acc = float((logits.argmax(1) == val.y).mean())
                val_loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(val.y)))
                best.update(epoch, model, val_acc, val_loss)
                bar.update(0, val_accuracy=val_acc)
            bar.update()
    if best.state is not None:  # else (no val split): the last epoch's weights
        model.load_state_dict(best.state)
    logits = torch.from_numpy(_predict(model, test.x, batch_size * 4, device))
    info = {"best_epoch": best.epoch if best.state is not None else epochs, "epochs": epochs,
            "val_accuracy": best.accuracy}
    return BaselineResult(torch.softmax(logits.double(), dim=1).numpy(), info,
                          model.cpu().eval())


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by size/8 pixels, and a horizontal flip half the time."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.inference_mode()
def _predict(model: nn.Module, x: np.ndarray, batch_size: int, device: torch.device
             ) -> np.ndarray:
    model.eval()
    if len(x) == 0:
        return np.zeros((0, _n_outputs(model)), np.float32)
    out = [model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def _n_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features
