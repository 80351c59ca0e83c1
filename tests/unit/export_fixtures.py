"""Tiny project for the export and predict tests: a 3-class Lite0 checkpoint at 32 px and a
manifest of a few pattern PNGs (train and test rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graft.backbones import create_model, get_spec
from graft.checkpoint import save_checkpoint
from graft.config import params_from_dict
from graft.layout import Layout
from tests.conftest import make_split_project

BACKBONE = "efficientnet_lite0"
SIZE = 64  # pixels: small so an export takes seconds (int8 Lite0 can fail in onnxruntime below)
CLASSES = ["circle", "square", "stripes"]  # sorted, as manifest.class_names gives them


def make_project(root: Path, per_class: int = 2) -> Layout:
    """A project root with data/prepared (images + manifest) and models/model.pt."""
    layout = make_split_project(root, {"train": per_class, "test": per_class})
    torch.manual_seed(0)
    model = create_model(BACKBONE, len(CLASSES), pretrained=True)
    save_checkpoint(layout.model, model, BACKBONE, CLASSES,
                    get_spec(BACKBONE).preprocessing(SIZE), strategy="linear_probe")
    return layout


def tiny_params(**export: object):
    return params_from_dict({"features": {"backbone": BACKBONE, "image_size": SIZE},
                             # gates wide open: 6 test images move accuracy in 17-point steps
                             "export": {"batch_size": 4, "max_int8_drop": 100.0,
                                        "max_fp16_drop": 100.0, **export}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, dict]:
    """One export shared by a module's tests (an export of Lite0 costs a few seconds)."""
    from graft.export import run

    layout = make_project(tmp_path_factory.mktemp("project"))
    metrics = run(tiny_params(), layout)
    return layout, metrics
