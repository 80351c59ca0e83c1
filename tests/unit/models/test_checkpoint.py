"""graft.models.checkpoint.load_frozen_head: a feature strategy's head, read without building its
backbone, computes what the whole network's classifier computes; anything else is left to
load_checkpoint."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from graft.models.backbones import create_model, get_spec
from graft.models.checkpoint import (
    CheckpointError,
    FrozenHead,
    load_checkpoint,
    load_frozen_head,
    save_checkpoint,
)
from graft.models.heads import head_logits, install_head
from tests.fixtures import BACKBONE, CLASSES, SIZE, constant_checkpoint

SPECS = [None, {"norm": "center_l2", "kind": "linear", "n_support": 0},
         {"norm": "center", "kind": "rbf", "n_support": 5}]


def frozen(path, spec, frozen_backbone=True):
    torch.manual_seed(0)
    model = create_model(BACKBONE, len(CLASSES), pretrained=False)
    if spec:
        install_head(model, spec)
    with torch.no_grad():
        for tensor in model.classifier.state_dict().values():
            tensor.copy_(torch.randn_like(tensor.float()))
    save_checkpoint(path, model, BACKBONE, CLASSES, get_spec(BACKBONE).preprocessing(SIZE),
                    head=spec, strategy="linear_probe", frozen_backbone=frozen_backbone)
    return path


@pytest.mark.parametrize("spec", SPECS, ids=["linear", "center_l2", "rbf"])
def test_the_head_alone_computes_what_the_whole_network_s_classifier_does(tmp_path, spec):
    path = frozen(tmp_path / "model.pt", spec)
    head, meta = load_frozen_head(path)
    assert isinstance(head, FrozenHead)
    whole, _ = load_checkpoint(path)
    x = np.random.default_rng(0).standard_normal((4, 1280)).astype(np.float32)  # Lite0's width
    np.testing.assert_allclose(head_logits(head.classifier, x), head_logits(whole.classifier, x),
                               atol=1e-9)
    assert meta["class_names"] == CLASSES and meta["preprocessing"].size == SIZE
    with pytest.raises(TypeError, match="no backbone"):
        head(torch.zeros(1, 3, SIZE, SIZE))


def test_reading_the_head_imports_no_timm(tmp_path):
    path = frozen(tmp_path / "model.pt", None)
    probe = ("import sys; from graft.models.checkpoint import load_frozen_head; "
             f"assert load_frozen_head({str(path)!r}) is not None; print('timm' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_other_checkpoints_are_left_to_load_checkpoint(tmp_path):
    assert load_frozen_head(frozen(tmp_path / "trained.pt", None, frozen_backbone=False)) is None
    assert load_frozen_head(constant_checkpoint(tmp_path / "plain.pt", CLASSES, 0)) is None


def test_a_head_that_does_not_fit_its_spec_is_refused(tmp_path):
    path = frozen(tmp_path / "model.pt", None)
    whole, meta = load_checkpoint(path)
    save_checkpoint(path, whole, BACKBONE, CLASSES, meta["preprocessing"],
                    head={"norm": "center", "kind": "linear", "n_support": 0},
                    frozen_backbone=True)  # says centred, holds no mean
    with pytest.raises(CheckpointError, match=r"model\.pt: the head's weights do not fit"):
        load_frozen_head(path)
