"""The networks of the from-scratch baselines: what they are, so a checkpoint can rebuild them.

Both take the same input as the exported models (float32 (N, 3, S, S), `preprocessing(S)`: raw
pixels scaled to [-1, 1]) and output logits. graft.evaluation.baselines trains them; when
`evaluate.on_negative_transfer: use_baseline` ships one, graft.models.checkpoint rebuilds it with
`build`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from graft.data.images import Preprocessing

PIXEL_MEAN = (0.5, 0.5, 0.5)  # raw pixels scaled to [-1, 1]; no ImageNet statistics here
PIXEL_STD = (0.5, 0.5, 0.5)
NAMES = ("pixels_logreg", "small_cnn")


def preprocessing(size: int) -> Preprocessing:
    """The baselines' input: size×size, raw pixels scaled to [-1, 1]."""
    return Preprocessing(size, PIXEL_MEAN, PIXEL_STD)


def build(name: str, k: int, size: int) -> nn.Module:
    """An untrained baseline network of the given kind (weights come from a state dict)."""
    if name == "pixels_logreg":
        return PixelsLinear(size, k)
    if name == "small_cnn":
        return SmallCNN(k)
    raise ValueError(f"unknown baseline {name!r}; baselines are {', '.join(NAMES)}")


class PixelsLinear(nn.Module):
    """pixels_logreg as a network: flatten, then one Linear layer holding the standardisation
    and the logistic regression (weight W/σ, bias b − (W/σ)·μ)."""

    def __init__(self, size: int, k: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * size * size, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks (32, 64, 64 channels), global average pool, linear."""

    def __init__(self, k: int, widths: Sequence[int] = (32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
