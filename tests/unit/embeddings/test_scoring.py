"""graft.embeddings.scoring: a frozen-backbone model scored from the store gives the logits the
network gives on the image files, without a backbone pass; any other model is not scored there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, read_manifest
from graft.embeddings.scoring import logits_from_store
from graft.models.checkpoint import load_checkpoint
from graft.models.inference import run_model
from graft.stages import finetune
from tests.fixtures import finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_store_logits_equal_the_networks_on_the_images(tiny_layout: Layout) -> None:
    finetune.run(finetune_params(), tiny_layout)
    model, meta = load_checkpoint(tiny_layout.model)
    rows = read_manifest(tiny_layout.manifest)
    cached = logits_from_store(model, meta, tiny_layout, rows)
    assert cached is not None and cached.shape == (len(rows), 3)
    direct = run_model(model, absolute_paths(rows, tiny_layout.manifest), meta["preprocessing"],
                       8, torch.device("cpu"))
    np.testing.assert_allclose(cached, direct, atol=1e-4 * max(1.0, np.abs(direct).max()))


def test_rows_missing_from_the_store_or_a_trained_backbone_are_not_scored_there(
        tiny_layout: Layout) -> None:
    finetune.run(finetune_params(), tiny_layout)
    model, meta = load_checkpoint(tiny_layout.model)
    rows = read_manifest(tiny_layout.manifest).copy()
    rows.loc[0, "sha256"] = "0" * 64  # content the store has never seen
    assert logits_from_store(model, meta, tiny_layout, rows) is None
    trained = {**meta, "info": {**meta["info"], "frozen_backbone": False}}
    assert logits_from_store(model, trained, tiny_layout, rows.iloc[1:]) is None
