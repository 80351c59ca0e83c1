"""graft.strategies.batches: class-balanced sampling, mixup and cutmix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.strategies.batches import cut_box, epoch_batches, mix


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
