"""The training loop of the network strategies (graft.strategies.training): learning from a zero
head with a cosine schedule, early stopping, seeding, frozen blocks and BatchNorm statistics,
L2-SP, class weights, label smoothing and the time budget; through the finetune stage on the tiny
project (3 classes of coloured patterns, 4 training and 3 validation images per class, Lite0 at
32 px)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from graft.core.layout import Layout
from graft.models.backbones import create_model, get_spec
from graft.models.checkpoint import load_checkpoint
from graft.stages import finetune
from graft.strategies import step, training
from tests.fixtures import BACKBONE, CLASSES, FAST, drop_val, finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    return create_model(BACKBONE, len(CLASSES)).state_dict()


def body_distance(state: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """‖θ − θ₀‖ over the backbone's weights (BatchNorm buffers and the head left out)."""
    keys = [k for k, v in start.items()
            if v.is_floating_point() and not k.startswith("classifier.") and "running" not in k]
    return float(torch.sqrt(sum(((state[k] - start[k]) ** 2).sum() for k in keys)))


def test_finetune_learns_from_a_zero_head(tiny_layout: Layout) -> None:
    # finetune starts from a zero head (loss = ln 3): the drop below comes from training.
    layout = tiny_layout
    params = finetune_params(strategy="finetune", lr=0.05, epochs=3, batch_size=4, augment=True)
    metrics = finetune.run(params, layout)
    plot = pd.read_csv(layout.plot("finetune.csv"))
    assert list(plot.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy", "lr"]
    assert plot["epoch"].tolist() == [0, 1, 2, 3] and metrics["epochs_run"] == 3
    assert plot["val_loss"].iloc[0] == pytest.approx(np.log(3), abs=0.05)
    assert plot["val_loss"].min() < np.log(3) - 0.2
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.8
    assert metrics["val_accuracy"] == plot["val_accuracy"].iloc[metrics["best_epoch"]]
    assert plot["lr"].iloc[1] == pytest.approx(0.05) and plot["lr"].iloc[3] < 0.05  # cosine
    _, meta = load_checkpoint(layout.model)
    assert meta["info"]["strategy"] == "finetune"
    assert meta["info"]["best_epoch"] == metrics["best_epoch"]


def test_early_stopping_restores_the_best_epoch(
    tiny_layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    # Learning rates of 1 wreck the network: no epoch beats the probe-initialised start (lp_ft).
    params = finetune_params(strategy="lp_ft", c_grid=[1.0], epochs=6, patience=2, lr=1.0,
                             backbone_lr=1.0, batch_size=4)
    metrics = finetune.run(params, tiny_layout)
    plot = pd.read_csv(tiny_layout.plot("finetune.csv"))
    assert (plot["val_accuracy"].iloc[1:] < plot["val_accuracy"].iloc[0]).all()
    assert (metrics["best_epoch"], metrics["epochs_run"], len(plot)) == (0, 2, 3)
    state = load_checkpoint(tiny_layout.model)[0].state_dict()
    assert body_distance(state, pretrained) == 0.0  # the start, restored bit for bit


def test_training_is_deterministic_for_a_seed(tiny_layout: Layout) -> None:
    drop_val(tiny_layout)
    states = []
    for seed in (0, 0, 1):
        finetune.run(finetune_params(strategy="finetune", c_grid=[0.1], epochs=2, batch_size=4,
                                     augment=True, seed=seed), tiny_layout)
        states.append(load_checkpoint(tiny_layout.model)[0].state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_frozen_blocks_and_batchnorm_statistics_stay_pretrained(
    tiny_layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    drop_val(tiny_layout)
    params = finetune_params(strategy="finetune", freeze_blocks=2, backbone_lr=0.01, patience=9,
                             c_grid=[1e-3], **FAST)
    finetune.run(params, tiny_layout)
    state = load_checkpoint(tiny_layout.model)[0].state_dict()
    frozen = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")
    for key, value in pretrained.items():
        if key.startswith(frozen) or "running_" in key:
            assert torch.equal(state[key], value), key
    trained = [k for k in pretrained if k.startswith("blocks.2.") and k.endswith("weight")]
    assert any(not torch.equal(state[k], pretrained[k]) for k in trained)


def test_bn_train_updates_statistics_outside_the_frozen_blocks(
    tiny_layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    drop_val(tiny_layout)
    params = finetune_params(strategy="finetune", freeze_blocks=1, bn_train=True, **FAST)
    finetune.run(params, tiny_layout)
    state = load_checkpoint(tiny_layout.model)[0].state_dict()
    key = "blocks.0.0.bn1.running_mean"  # in the frozen block 0
    assert torch.equal(state[key], pretrained[key])
    assert not torch.equal(state["bn2.running_mean"], pretrained["bn2.running_mean"])


def test_l2sp_keeps_the_backbone_near_its_pretrained_weights(
    tiny_layout: Layout, pretrained: dict[str, torch.Tensor]
) -> None:
    drop_val(tiny_layout)
    distances = {}
    for lam in (0.0, 1e4):
        # 18 steps: with Adam the pull of a huge λ bounds the drift at about lr per weight,
        # while without it the drift grows with every step
        params = finetune_params(strategy="finetune", l2sp=lam, backbone_lr=1e-3, c_grid=[1e-3],
                                 epochs=3, batch_size=2, augment=False)
        finetune.run(params, tiny_layout)
        distances[lam] = body_distance(load_checkpoint(tiny_layout.model)[0].state_dict(),
                                       pretrained)
    assert distances[0.0] > 1.0
    assert distances[1e4] < 0.1 * distances[0.0], distances


def test_balanced_class_weights_match_scikit_learn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 0, 1, 2, 2])
    p = finetune_params(class_weight="balanced").finetune
    ours = step.class_weights(torch.from_numpy(y), 3, p).numpy()
    np.testing.assert_allclose(ours, compute_class_weight("balanced", classes=np.arange(3), y=y),
                               rtol=1e-6)
    assert step.class_weights(torch.from_numpy(y), 3, finetune_params().finetune) is None


def test_label_smoothing_reaches_the_training_loss() -> None:
    model = nn.Module()
    model.classifier = nn.Linear(2, 3)
    for eps in (0.0, 0.3):
        made = step.make_step(model, torch.zeros(0), finetune_params(label_smoothing=eps).finetune,
                              torch.device("cpu"), 3)
        logits = torch.tensor([[20.0, 0.0, 0.0]])  # confident and right
        loss = float(made.criterion(logits, torch.tensor([0])))
        # smoothed target (1 − ε + ε/3, ε/3, ε/3): the ε/3 terms cost about 20 nats each
        assert loss == pytest.approx(2 * eps / 3 * 20, abs=1e-3)


def test_train_stops_after_the_first_epoch_when_the_budget_cannot_hold_the_rest() -> None:
    model = create_model(BACKBONE, 3)
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    data = training.Data(x, torch.tensor([0, 1, 2, 0]), x[:0], torch.zeros(0, dtype=torch.long))
    pre = get_spec(BACKBONE).preprocessing(32)
    with pytest.raises(training.BudgetExceeded, match=r"first epoch × epochs"):
        training.train(model, data, pre, finetune_params(**FAST).finetune, torch.device("cpu"),
                       3, budget_s=1e-6)
