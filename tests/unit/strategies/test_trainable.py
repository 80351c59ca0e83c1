"""graft.strategies.trainable: which weights train, in which parameter group, at which lr
(partial freezing, L2-SP in place of weight decay, layer-wise lr decay), and the train mode that
keeps frozen BatchNorm statistics (graft.strategies.step.set_train_mode)."""

from __future__ import annotations

import pytest

from graft.models.backbones import create_model
from graft.strategies.step import set_train_mode
from graft.strategies.trainable import freeze, layer_depth, param_groups
from tests.fixtures import BACKBONE, CLASSES, finetune_params


def test_param_groups_freezing_and_train_mode() -> None:
    model = create_model(BACKBONE, len(CLASSES))
    frozen = freeze(model, 2)
    p = finetune_params(l2sp=0.1, weight_decay=0.05, lr=0.01, backbone_lr=0.001).finetune
    head, body = param_groups(model, p)
    assert (head["lr"], head["weight_decay"], len(head["params"])) == (0.01, 0.05, 2)
    assert (body["lr"], body["weight_decay"]) == (0.001, 0.0)  # L2-SP replaces weight decay
    frozen_ids = {id(q) for m in frozen for q in m.parameters()}
    assert frozen_ids and not frozen_ids & {id(q) for q in body["params"]}
    assert len(head["params"]) + len(body["params"]) + len(frozen_ids) == len(list(
        model.parameters()))
    no_l2sp = param_groups(model, finetune_params(weight_decay=0.05).finetune)
    assert no_l2sp[1]["weight_decay"] == 0.05

    set_train_mode(model, bn_train=False, frozen=frozen)
    assert model.classifier.training and not model.bn2.training
    set_train_mode(model, bn_train=True, frozen=frozen)
    assert model.bn2.training and not model.blocks[1][0].bn1.training


def test_llrd_gives_each_depth_its_learning_rate_and_lp_ft_a_small_head_lr() -> None:
    model = create_model(BACKBONE, 3)
    freeze(model, 2)  # stem, blocks 0 and 1: depths 8, 7, 6 have nothing to train
    p = finetune_params(llrd=0.5, lr=1e-2, backbone_lr=1e-3).finetune
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
    lp_ft = param_groups(model, finetune_params(strategy="lp_ft", lr=1e-2,
                                                backbone_lr=1e-3).finetune)
    assert [g["lr"] for g in lp_ft] == [1e-3, 1e-3]  # llrd = 1: one backbone group
