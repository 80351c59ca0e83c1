"""Which weights of an EfficientNet-Lite network train, at which learning rate, under which
regulariser: partial freezing, the optimiser's parameter groups (head lr, backbone lr, layer-wise
lr decay) and the L2-SP penalty. graft.strategies.training uses them.
"""

from __future__ import annotations

import torch
from torch import nn

from graft.core.config import FinetuneParams

STEM_DEPTH = 8  # conv_head/bn2 are depth 0, blocks[i] depth 7 − i, the stem below them


def freeze(model: nn.Module, n_blocks: int) -> list[nn.Module]:
    """Stop gradients in the stem and the first `n_blocks` of `model.blocks`; return those
    modules. 0 freezes nothing (full fine-tuning)."""
    if not 0 <= n_blocks <= len(model.blocks):
        raise ValueError(f"freeze_blocks={n_blocks}: the model has {len(model.blocks)} blocks")
    frozen = [model.conv_stem, model.bn1, *model.blocks[:n_blocks]] if n_blocks else []
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def head_lr(p: FinetuneParams) -> float:
    """`lr` for a zero head (finetune); lp_ft's probe head is already fitted: `backbone_lr`."""
    return p.backbone_lr if p.strategy == "lp_ft" else p.lr


def param_groups(model: nn.Module, p: FinetuneParams) -> list[dict]:
    """Head at `head_lr(p)`, trainable backbone at `backbone_lr`, or with `llrd` < 1 one group
    per depth d (see `layer_depth`) at backbone_lr·llrd^d. With L2-SP the backbone gets no weight
    decay: the L2-SP term already regularises it, towards the pretrained weights, not zero."""
    head = [q for q in model.classifier.parameters() if q.requires_grad]
    head_ids = {id(q) for q in head}
    groups = [{"params": head, "lr": head_lr(p), "weight_decay": p.weight_decay}]
    body_decay = 0.0 if p.l2sp > 0 else p.weight_decay
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, q in model.named_parameters():
        if q.requires_grad and id(q) not in head_ids:
            depth = layer_depth(name) if p.llrd != 1.0 else 0
            by_depth.setdefault(depth, []).append(q)
    for depth in sorted(by_depth):
        groups.append({"params": by_depth[depth], "lr": p.backbone_lr * p.llrd ** depth,
                       "weight_decay": body_decay, "depth": depth})
    return groups


def layer_depth(name: str) -> int:
    """Depth below the top of an EfficientNet(-Lite) backbone parameter: conv_head/bn2 0,
    blocks.i (of 7) 7 − i, conv_stem/bn1 8."""
    if name.startswith(("conv_head.", "bn2.")):
        return 0
    if name.startswith("blocks."):
        return 7 - int(name.split(".")[1])
    if name.startswith(("conv_stem.", "bn1.")):
        return STEM_DEPTH
    raise ValueError(f"parameter {name!r} is not part of an EfficientNet-Lite backbone")


def l2sp_penalty(anchors: list[tuple[nn.Parameter, torch.Tensor]]) -> torch.Tensor:
    """Σ ‖θ − θ₀‖² over the anchored (trainable backbone) weights, in fp32."""
    return sum(((q.float() - q0) ** 2).sum() for q, q0 in anchors)
