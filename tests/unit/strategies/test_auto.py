"""The `auto` strategy (graft.strategies.auto): every feature candidate scored by repeated k-fold
when val is small, lp_ft tried when val decides; through the finetune stage on the tiny project.
(auto with a timm backbone: tests/unit/stages/test_timm_backbone.py; with a registered toy
strategy: tests/unit/strategies/test_registry.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from graft.core.layout import Layout
from graft.data.manifest import read_manifest, write_manifest
from graft.models.checkpoint import load_checkpoint
from graft.stages import finetune
from graft.strategies import auto
from tests.fixtures import FAST, finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_auto_scores_every_candidate_by_repeated_cv_when_val_is_small(tiny_layout: Layout) -> None:
    p = finetune_params(strategy="auto", c_grid=[0.1, 1.0], svm_c_grid=[1.0],
                        svm_gamma_grid=[1.0])
    metrics = finetune.run(p, tiny_layout)  # 3 val images per class: repeated k-fold
    search = metrics["auto"]
    assert search["selection"] == "repeated_cv"
    cands = search["candidates"]
    assert len(cands) == len(auto.feature_candidates(p.finetune)) + 1 == 11
    assert "skipped" in cands[-1] and cands[-1]["strategy"] == "lp_ft"
    scores = [c["score"] for c in cands[:-1]]
    assert search["chosen"]["score"] == max(scores) > 0.6  # chance 1/3
    assert search["chosen"] == cands[scores.index(max(scores))]  # ties: the first
    assert load_checkpoint(tiny_layout.model)[1]["info"]["fitted_strategy"] == \
        search["chosen"]["strategy"]


def test_auto_tries_lp_ft_when_val_decides(tiny_layout: Layout) -> None:
    df = read_manifest(tiny_layout.manifest)  # 7 images per class: 2 train, 5 val
    first_two = df.groupby("label").cumcount() < 2
    df["split"] = np.where(first_two, "train", "val")
    write_manifest(tiny_layout.manifest, df)
    p = finetune_params(strategy="auto", c_grid=[1.0], svm_kernels=["linear"], svm_c_grid=[1.0],
                        **FAST)
    search = finetune.run(p, tiny_layout)["auto"]
    assert search["selection"] == "val"
    lp_ft = search["candidates"][-1]
    assert lp_ft["strategy"] == "lp_ft" and 0 <= lp_ft["score"] <= 1 and lp_ft["seconds"] > 0
