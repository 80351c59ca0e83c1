"""What every strategy is given, what it returns, and the two kinds of strategy.

A strategy fits a classifier for the manifest's classes from `Inputs` (the train + val rows,
their labels, their cached embeddings, the images on demand) and returns a `Fit`: the network
that ships (image → logits), its scores, its training curve and its own report for
metrics/finetune.json. `FeatureStrategy` subclasses fit a head on cached embeddings only
(`fit_head`), and the shipped network is the pretrained backbone with that head; the others
(`Strategy`) build the network themselves (fine-tuning, ensembles, the auto search).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from graft.core.config import FinetuneParams, Params
from graft.core.device import pick_device
from graft.core.layout import Layout
from graft.data.images import Preprocessing
from graft.data.manifest import absolute_paths, class_names, encode_labels, read_manifest
from graft.embeddings.store import load_embeddings, resolve_backbone, weights_dir, with_backbone
from graft.models.backbones import create_model, get_spec
from graft.models.heads import head_logits


class FinetuneError(ValueError):
    """A manifest the finetune stage cannot train on; the message names the file."""


@dataclass(frozen=True)
class FeatureData:
    """What a head is fitted on: the embeddings of the train + val rows (row i of `feats` is
    row i of the Inputs' `rows`), their class indices, which are training rows, and the
    `features.views` augmented views of each row ((n, N, D), or None)."""

    feats: np.ndarray
    y: np.ndarray
    is_train: np.ndarray
    n_classes: int
    views: np.ndarray | None = None

    def subset(self, rows: np.ndarray, is_train: np.ndarray) -> FeatureData:
        """Rows `rows` only, `is_train` saying which of them are fitted on (the others are
        held out): a fold of a cross-validation."""
        views = None if self.views is None else self.views[rows]
        return FeatureData(self.feats[rows], self.y[rows], is_train, self.n_classes, views)


@dataclass
class Inputs:
    """What every strategy fits on: the train + val rows and everything derived from them."""

    rows: pd.DataFrame
    classes: list[str]  # the training labels, sorted: index i is output i
    data: FeatureData  # the cached embeddings of `backbone`
    backbone: str
    pre: Preprocessing
    device: torch.device
    images: Callable[[], torch.Tensor]  # uint8 (N, 3, S, S), decoded on the first call only
    features_of: Callable[[str], FeatureData]  # the same rows embedded by another backbone
    weights_dir: Path  # features.weights_dir: the pretrained weights of `timm:` backbones

    @property
    def y(self) -> np.ndarray:
        return self.data.y

    @property
    def is_train(self) -> np.ndarray:
        return self.data.is_train

    @property
    def n_classes(self) -> int:
        return self.data.n_classes


@dataclass
class Curve:
    """plots/finetune.csv: one row per epoch, or per setting tried."""

    header: tuple[str, ...]
    rows: list[list]


@dataclass
class HeadFit:
    """A feature strategy's product before it is put on a backbone."""

    head: nn.Module  # pooled features → logits
    spec: dict[str, Any] | None  # graft.models.heads spec; None for a plain Linear
    val_accuracy: float | None  # held out, before the refit on train + val
    train_accuracy: float
    curve: Curve
    report: dict[str, Any]  # the strategy's own metrics (C, C_selection, setting, …)


@dataclass
class Fit:
    """A fitted strategy: what the finetune stage saves and reports."""

    model: nn.Module  # image → logits: what models/model.pt holds
    val_accuracy: float | None
    train_accuracy: float
    curve: Curve
    fitted: FinetuneParams  # the params actually fitted (`auto` narrows them to its choice)
    head: dict[str, Any] | None = None  # graft.models.heads spec of model.classifier
    network: dict[str, Any] | None = None  # graft.models.checkpoint `network` entry
    report: dict[str, Any] = field(default_factory=dict)  # metrics of the strategy's own
    # the network is the pretrained backbone(s), untouched, with a head: it can be scored from
    # the embedding store (graft.embeddings.scoring)
    frozen_backbone: bool = False


class Strategy:
    """A way to fit the classifier. Subclasses are registered by name in graft.strategies."""

    def fit(self, p: FinetuneParams, inputs: Inputs, budget_s: float | None = None) -> Fit:
        raise NotImplementedError

    def unsupported(self, backbone: str) -> str | None:
        """Why this strategy cannot train on `backbone`, or None when it can."""
        return None


class FeatureStrategy(Strategy):
    """A head fitted on cached embeddings; the network that ships is the pretrained backbone
    with that head as its classifier, so it maps an image to logits with no side files."""

    def fit_head(self, p: FinetuneParams, data: FeatureData) -> HeadFit:
        """Choose a setting on the held-out rows, then refit on every row (train + val)."""
        raise NotImplementedError

    def score(self, p: FinetuneParams, data: FeatureData) -> float:
        """Accuracy on data's held-out rows of the head fitted on its training rows, `p`
        narrowed to one setting (`narrow`): how `auto` compares settings."""
        raise NotImplementedError

    def settings(self, p: FinetuneParams) -> list[dict[str, Any]]:
        """The settings `auto` tries, simplest first, e.g. [{'C': 0.01}, …]."""
        return [{}]

    def narrow(self, p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
        """`p` with this strategy and its grids narrowed to one of `settings(p)`."""
        raise NotImplementedError

    def fit(self, p: FinetuneParams, inputs: Inputs, budget_s: float | None = None) -> Fit:
        fitted = self.fit_head(p, inputs.data)
        model = create_model(inputs.backbone, inputs.n_classes, weights_dir=inputs.weights_dir)
        model.classifier = fitted.head
        return Fit(model, fitted.val_accuracy, fitted.train_accuracy, fitted.curve, p,
                   head=fitted.spec, report=fitted.report, frozen_backbone=True)


def train_accuracy(head: nn.Module, data: FeatureData) -> float:
    """Accuracy of `head` (as shipped) on the training rows' cached features."""
    logits = head_logits(head, data.feats[data.is_train])
    return float((logits.argmax(1) == data.y[data.is_train]).mean())


def load_inputs(params: Params, layout: Layout) -> Inputs:
    """The manifest's train + val rows with their labels and cached embeddings (features stage)
    of the backbone the stages use (features.backbone, or `auto`'s choice)."""
    df = read_manifest(layout.manifest)
    rows = df.loc[df["split"].isin(["train", "val"])].reset_index(drop=True)
    classes = class_names(df)
    y = label_indices(rows, classes, str(layout.manifest))
    is_train = (rows["split"] == "train").to_numpy(copy=True)  # writable: torch indexes with it
    backbone = resolve_backbone(params, layout)
    pre = get_spec(backbone).preprocessing(params.features.image_size)
    paths = absolute_paths(rows, layout.manifest)
    images = functools.cache(lambda: torch.from_numpy(
        pre.load_uint8(paths, params.validate.max_pixels)))  # ~150 KB an image at 224 px

    def features_of(name: str) -> FeatureData:
        feats, views = load_embeddings(layout, with_backbone(params, name), rows)
        return FeatureData(feats, y, is_train, len(classes), views)

    return Inputs(rows, classes, features_of(backbone), backbone, pre, pick_device(), images,
                  features_of, weights_dir(params, layout))


def label_indices(rows: pd.DataFrame, classes: list[str], manifest: str) -> np.ndarray:
    """Class indices of `rows` (graft.data.manifest.class_names order); FinetuneError when
    there are fewer than 2 classes, ManifestError when a validation label has no training
    images."""
    if len(classes) < 2:
        raise FinetuneError(f"{manifest}: training rows have {len(classes)} class(es) "
                            f"{classes}; a classifier needs at least 2")
    return encode_labels(rows["label"], classes, manifest, "validation")
