"""Network strategies (finetune vs lp_ft, llrd, label smoothing, balanced sampler, mixup/cutmix)
and the auto search, on the tiny pattern project of test_finetune (Lite0 at 32 px)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from graft import auto, finetune, training
from graft.backbones import create_model, get_spec
from graft.batches import cut_box, epoch_batches, mix
from graft.checkpoint import load_checkpoint
from graft.config import ConfigError
from graft.layout import Layout
from graft.manifest import read_manifest, write_manifest
from graft.trainable import layer_depth, param_groups
from tests.unit import test_finetune as shared
from tests.unit.test_finetune import tiny_params

# the tiny project and the one-thread setting of test_finetune, as fixtures of this module
base, layout, one_thread = shared.base, shared.layout, shared.one_thread
FAST = {"epochs": 2, "batch_size": 4, "augment": False}


def test_balanced_sampler_draws_classes_uniformly_and_shuffle_is_a_permutation() -> None:
    y = torch.tensor([0] * 40 + [1] * 5 + [2] * 5)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([torch.cat(epoch_batches(y, [16, 16, 16, 2], "balanced", gen))
                       for _ in range(40)])  # 2000 draws
    share = torch.bincount(y[drawn], minlength=3).double() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.04), share
    assert len(set(drawn[y[drawn] == 1].tolist())) == 5  # every minority image is oversampled
    perm = torch.cat(epoch_batches(y, [16, 16, 16, 2], "shuffle", gen))
    assert sorted(perm.tolist()) == list(range(50))


def test_llrd_gives_each_depth_its_learning_rate_and_lp_ft_a_small_head_lr() -> None:
    model = create_model("efficientnet_lite0", 3)
    training.freeze(model, 2)  # stem, blocks 0 and 1: depths 8, 7, 6 have nothing to train
    p = tiny_params(llrd=0.5, lr=1e-2, backbone_lr=1e-3).finetune
    groups = param_groups(model, p)
    assert groups[0]["lr"] == 1e-2 and "depth" not in groups[0]
    assert [g["depth"] for g in groups[1:]] == [0, 1, 2, 3, 4, 5]
    for g in groups[1:]:
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** g["depth"])
    names = {id(q): n for n, q in model.named_parameters()}
    for g in groups[1:]:
        assert {layer_depth(names[id(q)]) for q in g["params"]} == {g["depth"]}
    assert layer_depth("blocks.6.0.conv_pw.weight") == 1 and layer_depth("conv_stem.weight") == 8
    trainable = sum(q.requires_grad for q in model.parameters())
    assert sum(len(g["params"]) for g in groups) == trainable
    lp_ft = param_groups(model, tiny_params(strategy="lp_ft", lr=1e-2, backbone_lr=1e-3).finetune)
    assert [g["lr"] for g in lp_ft] == [1e-3, 1e-3]  # llrd = 1: one backbone group


def test_label_smoothing_reaches_the_training_loss() -> None:
    model = nn.Module()
    model.classifier = nn.Linear(2, 3)
    data = training.Data(*(torch.zeros(0),) * 4)
    for eps in (0.0, 0.3):
        step = training._prepare(model, data, tiny_params(label_smoothing=eps).finetune,
                                 torch.device("cpu"), 3)
        logits = torch.tensor([[20.0, 0.0, 0.0]])  # confident and right
        loss = float(step.criterion(logits, torch.tensor([0])))
        # smoothed target (1 − ε + ε/3, ε/3, ε/3): the ε/3 terms cost about 20 nats each
        assert loss == pytest.approx(2 * eps / 3 * 20, abs=1e-3)


def test_mixup_blends_two_images_and_cutmix_pastes_a_box_of_the_right_area() -> None:
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 16, 16).clone()  # image i is all i
    y = torch.arange(8)
    rng = np.random.default_rng(0)
    same = mix(x, y, 0.0, 0.0, rng)
    assert same[0] is x and same[3] == 1.0
    mixed, y_a, y_b, lam = mix(x, y, 0.4, 0.0, rng)
    assert 0 < lam < 1 and torch.equal(y_a, y)
    expected = (lam * y + (1 - lam) * y_b).float().view(8, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(mixed, expected)
    mixed, y_a, y_b, lam = mix(x, y, 0.0, 1.0, rng)
    from_a = mixed == y.view(8, 1, 1, 1).float()
    from_b = mixed == y_b.view(8, 1, 1, 1).float()
    assert bool((from_a | from_b).all())
    moved = y_b != y  # images paired with themselves show no box
    assert from_a[moved].float().mean().item() == pytest.approx(lam)
    for lam in (0.1, 0.5, 0.9):
        top, left, h, w = cut_box(64, 64, lam, np.random.default_rng(1))
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        assert h * w <= (1 - lam) * 64 * 64 + 2 * 64  # clipped boxes are smaller


def test_finetune_starts_from_a_zero_head_and_lp_ft_from_the_probe(layout: Layout) -> None:
    starts = {}
    for strategy in ("finetune", "lp_ft"):
        finetune.run(tiny_params(strategy=strategy, c_grid=[1.0], lr=1e-2, backbone_lr=1e-4,
                                 **FAST), layout)
        plot = pd.read_csv(layout.plots / "finetune.csv")
        starts[strategy] = plot.iloc[0]
        assert plot["lr"].iloc[1] == pytest.approx(1e-2 if strategy == "finetune" else 1e-4)
        assert load_checkpoint(layout.model)[1]["info"]["strategy"] == strategy
    assert starts["finetune"]["val_loss"] == pytest.approx(np.log(3), abs=1e-6)  # zero head
    assert starts["finetune"]["val_accuracy"] == pytest.approx(1 / 3)
    assert starts["lp_ft"]["val_loss"] < np.log(3) - 0.2
    assert starts["lp_ft"]["val_accuracy"] >= 0.8


def test_finetune_learns_with_every_option_on(layout: Layout) -> None:
    params = tiny_params(strategy="finetune", lr=0.05, epochs=3, batch_size=4, llrd=0.7,
                         label_smoothing=0.1, sampler="balanced", mixup=0.4, cutmix=1.0)
    metrics = finetune.run(params, layout)
    assert metrics["best_epoch"] >= 1 and metrics["val_accuracy"] >= 0.67  # chance 1/3
    assert metrics["C"] is None and metrics["feature_norm"] == "none"


def test_train_stops_after_the_first_epoch_when_the_budget_cannot_hold_the_rest() -> None:
    model = create_model("efficientnet_lite0", 3)
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    data = training.Data(x, torch.tensor([0, 1, 2, 0]), x[:0], torch.zeros(0, dtype=torch.long))
    pre = get_spec("efficientnet_lite0").preprocessing(32)
    with pytest.raises(training.BudgetExceeded, match=r"first epoch × epochs"):
        training.train(model, data, pre, tiny_params(**FAST).finetune, torch.device("cpu"), 3,
                       budget_s=1e-6)


def test_auto_scores_every_candidate_by_repeated_cv_when_val_is_small(layout: Layout) -> None:
    p = tiny_params(strategy="auto", c_grid=[0.1, 1.0], svm_c_grid=[1.0], svm_gamma_grid=[1.0])
    metrics = finetune.run(p, layout)  # 3 val images per class: repeated k-fold
    search = metrics["auto"]
    assert search["selection"] == "repeated_cv"
    cands = search["candidates"]
    assert len(cands) == len(auto.feature_candidates(p.finetune)) + 1 == 11
    assert "skipped" in cands[-1] and cands[-1]["strategy"] == "lp_ft"
    scores = [c["score"] for c in cands[:-1]]
    assert search["chosen"]["score"] == max(scores) > 0.6  # chance 1/3
    assert search["chosen"] == cands[scores.index(max(scores))]  # ties: the first
    assert load_checkpoint(layout.model)[1]["info"]["fitted_strategy"] == \
        search["chosen"]["strategy"]


def test_auto_tries_lp_ft_when_val_decides(layout: Layout) -> None:
    df = read_manifest(layout.manifest)  # 7 images per class: 2 train, 5 val
    first_two = df.groupby("label").cumcount() < 2
    df["split"] = np.where(first_two, "train", "val")
    write_manifest(layout.manifest, df)
    p = tiny_params(strategy="auto", c_grid=[1.0], svm_kernels=["linear"], svm_c_grid=[1.0],
                    **FAST)
    search = finetune.run(p, layout)["auto"]
    assert search["selection"] == "val"
    lp_ft = search["candidates"][-1]
    assert lp_ft["strategy"] == "lp_ft" and 0 <= lp_ft["score"] <= 1 and lp_ft["seconds"] > 0


@pytest.mark.parametrize("section", [{"llrd": 0.0}, {"llrd": 1.5}, {"label_smoothing": 1.0},
                                     {"mixup": -0.1}, {"cutmix": -1.0}, {"budget_s": 0},
                                     {"strategy": "lp_ft", "feature_norm": "l2"}])
def test_out_of_range_network_options_are_rejected(section: dict, tmp_path) -> None:
    key = "feature_norm" if "strategy" in section else next(iter(section))
    with pytest.raises(ConfigError, match=f"finetune.{key} "):
        finetune.run(tiny_params(**section), Layout(tmp_path))


def test_config_rejects_an_unknown_sampler() -> None:
    with pytest.raises(ConfigError, match="sampler"):
        tiny_params(sampler="weighted")
