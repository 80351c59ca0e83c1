"""Tiny project for the evaluate and baselines tests: pattern PNGs in train/val/test splits, a
manifest, and a 3-class Lite0 checkpoint at 32 px (random head, or zeroed)."""

from __future__ import annotations

from pathlib import Path

import torch

from graft.backbones import create_model, get_spec
from graft.checkpoint import save_checkpoint
from graft.config import Params, params_from_dict
from graft.layout import Layout
from tests.conftest import make_split_project

BACKBONE = "efficientnet_lite0"
SIZE = 32  # pixels: tiny, so a forward pass over the test split takes well under a second
CLASSES = ["circle", "square", "stripes"]  # sorted, as manifest.class_names gives them
PER_SPLIT = {"train": 8, "val": 4, "test": 6}  # images per class


def make_project(root: Path, zero_head: bool = False, test_labels: dict[str, str] | None = None
                 ) -> Layout:
    """A project root with data/prepared (images + manifest) and models/model.pt.

    `test_labels` renames test labels in the manifest (e.g. {"square": "hexagon"}) to build a
    manifest the model cannot score.
    """
    layout = make_split_project(root, PER_SPLIT, test_labels=test_labels)
    torch.manual_seed(0)
    model = create_model(BACKBONE, len(CLASSES), pretrained=False)
    if zero_head:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
    save_checkpoint(layout.model, model, BACKBONE, CLASSES,
                    get_spec(BACKBONE).preprocessing(SIZE), strategy="test")
    return layout


def tiny_params(**evaluate: object) -> Params:
    """Params with a short bootstrap and a few CNN epochs, so a whole run takes seconds."""
    section = {"bootstrap": 200, "cnn_epochs": 4, "batch_size": 16, "cnn_batch_size": 8,
               **evaluate}
    return params_from_dict({"features": {"backbone": BACKBONE, "image_size": SIZE},
                             "evaluate": section})
