"""The network strategies (graft.strategies.network): `finetune` starts from a zero head, `lp_ft`
from the linear probe, and both learn with every option of the loop on; through the finetune
stage on the tiny project (Lite0 at 32 px)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from graft.core.layout import Layout
from graft.models.checkpoint import load_checkpoint
from graft.stages import finetune
from tests.fixtures import FAST, finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_finetune_starts_from_a_zero_head_and_lp_ft_from_the_probe(tiny_layout: Layout) -> None:
    starts = {}
    for strategy in ("finetune", "lp_ft"):
        finetune.run(finetune_params(strategy=strategy, c_grid=[1.0], lr=1e-2, backbone_lr=1e-4,
                                     **FAST), tiny_layout)
        plot = pd.read_csv(tiny_layout.plot("finetune.csv"))
        starts[strategy] = plot.iloc[0]
        assert plot["lr"].iloc[1] == pytest.approx(1e-2 if strategy == "finetune" else 1e-4)
        assert load_checkpoint(tiny_layout.model)[1]["info"]["strategy"] == strategy
    assert starts["finetune"]["val_loss"] == pytest.approx(np.log(3), abs=1e-6)  # zero head
    assert starts["finetune"]["val_accuracy"] == pytest.approx(1 / 3)
    assert starts["lp_ft"]["val_loss"] < np.log(3) - 0.2
    assert starts["lp_ft"]["val_accuracy"] >= 0.8


def test_finetune_learns_with_every_option_on(tiny_layout: Layout) -> None:
    params = finetune_params(strategy="finetune", lr=0.05, epochs=3, batch_size=4, llrd=0.7,
                             label_smoothing=0.1, sampler="balanced", mixup=0.4, cutmix=1.0)
    metrics = finetune.run(params, tiny_layout)
    assert metrics["best_epoch"] >= 1 and metrics["val_accuracy"] >= 0.67  # chance 1/3
    assert metrics["C"] is None and metrics["feature_norm"] == "none"
