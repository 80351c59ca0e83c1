"""Fine-tuning on several processes (graft.core.distributed, graft.strategies.step): the ranks'
shares of a global batch, with their scaled summed losses, average to the one-process gradient;
and `finetune.nproc_per_node: 2` really runs two gloo processes under torchrun whose weights are
the one-process run's, to float rounding."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from graft.core.config import ConfigError
from graft.core.distributed import ONE_PROCESS, Ranks
from graft.core.layout import Layout
from graft.models.checkpoint import load_checkpoint
from graft.stages import finetune, run_stage
from graft.strategies import check_params
from graft.strategies.step import Step, train_step
from tests.fixtures import copy_stage_outputs, finetune_params

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(ranks: Ranks, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
           weight: torch.Tensor) -> list[torch.Tensor]:
    """The gradients one train_step leaves (lr 0: the weights stay), as rank `ranks` sees them."""
    model = copy.deepcopy(model)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1,
                                    reduction="sum" if ranks.distributed else "mean")
    step = Step(model, criterion, torch.optim.AdamW(model.parameters(), lr=0.0),
                torch.amp.GradScaler("cpu", enabled=False), None, np.random.default_rng(0),
                mixup=0.4, cutmix=0.0, l2sp=0.0, anchors=[], ranks=ranks)
    train_step(step, x, y)
    return [q.grad.clone() for q in model.parameters()]


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_scaled_shares_average_to_the_one_process_gradient(world: int) -> None:
    # 7 images over 2 or 3 ranks: unequal shares, class weights, label smoothing and mixup
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(7, 3, 2, 2), torch.tensor([0, 1, 2, 0, 0, 1, 0])
    weight = torch.tensor([0.5, 1.5, 2.0])
    one = _grads(ONE_PROCESS, model, x, y, weight)
    shares = [_grads(Ranks(r, world), model, x, y, weight) for r in range(world)]
    for i, g in enumerate(one):
        ddp = sum(s[i] for s in shares) / world  # what DDP's all-reduce averages to
        torch.testing.assert_close(ddp, g, rtol=1e-5, atol=1e-7)
    assert sorted(sum((list(range(7))[Ranks(r, world).share(7)] for r in range(world)), [])) \
        == list(range(7))


def test_nproc_per_node_needs_a_network_strategy() -> None:
    with pytest.raises(ConfigError, match=r"finetune.nproc_per_node = 2 needs a network "
                                          r"strategy \(finetune, lp_ft\)"):
        check_params(finetune_params(nproc_per_node=2).finetune, "params.yaml")


# ~30–60 s: torchrun, two processes importing torch and timm, 6 steps at 32 px
def test_two_gloo_processes_train_the_weights_of_one(tiny_base, tmp_path) -> None:
    settings = {"strategy": "finetune", "epochs": 2, "batch_size": 5, "lr": 1e-3,
                "backbone_lr": 1e-4, "augment": True, "mixup": 0.2, "label_smoothing": 0.1}
    one = copy_stage_outputs(tiny_base, tmp_path / "one")
    finetune.run(finetune_params(**settings), one)

    two = copy_stage_outputs(tiny_base, tmp_path / "two")
    params = finetune_params(**settings, nproc_per_node=2).to_dict()
    two.params.write_text(yaml.safe_dump(params))
    metrics = run_stage("finetune", two.root)  # `graft finetune --no-prefect`: torchrun, 2 ranks
    assert metrics == json.loads(two.metrics("finetune").read_text())  # rank 0's
    assert metrics["processes"] == 2
    assert metrics["best_epoch"] == json.loads(one.metrics("finetune").read_text())["best_epoch"]
    curves = [pd.read_csv(layout.plot("finetune.csv")) for layout in (one, two)]
    np.testing.assert_allclose(curves[1].to_numpy(float), curves[0].to_numpy(float),
                               rtol=1e-4, atol=1e-5)
    worst = max_difference(one, two)
    assert worst < settings["lr"] / 3, worst  # all-reduce order: ~1e-7 per gradient element
    assert sorted(p.name for p in two.models.iterdir()) == ["model.pt"]  # no stray temp files


def max_difference(a: Layout, b: Layout) -> float:
    """max |Δ| over the floating-point tensors of the two projects' models/model.pt."""
    sa, sb = (load_checkpoint(layout.model)[0].state_dict() for layout in (a, b))
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa if sa[k].is_floating_point())
