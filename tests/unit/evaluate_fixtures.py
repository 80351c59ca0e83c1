"""Tiny project for the evaluate and baselines tests: pattern PNGs in train/val/test splits, a
manifest, and a 3-class Lite0 checkpoint at 32 px (random head, or zeroed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from graft.backbones import create_model, get_spec
from graft.checkpoint import save_checkpoint
from graft.config import Params, params_from_dict
from graft.files import sha256_file
from graft.layout import Layout
from graft.manifest import write_manifest
from tests.conftest import make_pattern_images

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
    layout = Layout(root)
    rows = []
    for seed, (split, per_class) in enumerate(PER_SPLIT.items()):
        make_pattern_images(layout.prepared / split, per_class, size=40, seed=seed)
        for dest in sorted((layout.prepared / split).rglob("*.png")):
            label = dest.parent.name
            if split == "test" and test_labels:
                label = test_labels.get(label, label)
            rows.append({"path": dest.relative_to(layout.prepared).as_posix(), "label": label,
                         "split": split, "sha256": sha256_file(dest), "width": 40, "height": 40,
                         "mode": "RGB"})
    write_manifest(layout.manifest, pd.DataFrame(rows))
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
