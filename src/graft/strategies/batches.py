"""What one training epoch feeds the network: the order of the images (plain shuffle or
class-balanced oversampling) and the optional mixup / cutmix of each batch.

- `balanced` sampling draws every epoch's indices with replacement, image i with probability
  1/(k·n_c(i)), so each of the k classes is expected in 1/k of the draws however few images it
  has: the minority images repeat (oversampling) instead of the loss being reweighted.
- mixup (Zhang et al. 2018) blends two images, x = λ·x_a + (1−λ)·x_b; cutmix (Yun et al. 2019)
  pastes a box of x_b into x_a and sets λ to the area left of x_a. Either way the loss is
  λ·L(y_a) + (1−λ)·L(y_b), λ ~ Beta(α, α). Both are off (α = 0) by default: with a handful of
  images per class they regularise, but they also slow down learning of the few labels there are.
"""

from __future__ import annotations

import numpy as np
import torch


def epoch_batches(y: torch.Tensor, sizes: list[int], sampler: str,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches of indices into `y` (int64 labels), `sizes` images each:
    a permutation (`shuffle`) or class-balanced draws with replacement (`balanced`)."""
    n = sum(sizes)
    if sampler == "balanced":
        counts = torch.bincount(y)
        weights = 1.0 / counts[y].double()  # each present class gets the same total weight
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    elif sampler == "shuffle":
        order = torch.randperm(len(y), generator=generator)[:n]
    else:
        raise ValueError(f"sampler {sampler!r} is not one of shuffle, balanced")
    starts = np.cumsum([0, *sizes[:-1]])
    return [order[s : s + k] for s, k in zip(starts, sizes, strict=True)]


def mix(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float,
        rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(mixed images, y_a, y_b, λ) for a float batch (B, C, H, W): the loss is
    λ·L(y_a) + (1−λ)·L(y_b). With both α = 0 the batch comes back unchanged with λ = 1;
    with both > 0 each batch uses one of the two, chosen with probability ½."""
    if mixup <= 0 and cutmix <= 0:
        return x, y, y, 1.0
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    perm = torch.from_numpy(rng.permutation(len(y))).to(x.device)
    if not use_cutmix:
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam
    top, left, h, w = cut_box(x.shape[-2], x.shape[-1], lam, rng)
    mixed = x.clone()
    mixed[..., top : top + h, left : left + w] = x[perm][..., top : top + h, left : left + w]
    area = h * w / (x.shape[-2] * x.shape[-1])
    return mixed, y, y[perm], 1.0 - area  # λ = the fraction of pixels still from x_a


def cut_box(height: int, width: int, lam: float,
            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a box with about (1−λ) of the image's area, centred uniformly at
    random and clipped at the borders (as in the cutmix paper)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(left), int(bottom - top), int(right - left)
