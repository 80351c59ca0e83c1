"""Augmented views (`features.views`, graft.embeddings.views): made reproducibly and appended as
extra rows with their labels. (Cached by the features stage and fitted on:
tests/unit/stages/test_views.py; never leaked into held-out rows: strategies/test_views.py.)"""

from __future__ import annotations

import numpy as np
import torch

from graft.embeddings.store import view_keys
from graft.embeddings.views import make_views, with_views
from graft.models.backbones import get_spec
from tests.fixtures import BACKBONE, SIZE


def test_views_are_the_mirror_then_reproducible_draws() -> None:
    pre = get_spec(BACKBONE).preprocessing(SIZE)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    shas = ["a" * 64, "b" * 64]
    views = make_views(images, shas, 3, pre)
    assert views.shape == (6, 3, SIZE, SIZE) and views.dtype == torch.float32
    mirror = (images[0].flip(-1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(views[0], mirror)  # view 1 of image 0
    torch.testing.assert_close(make_views(images, shas, 3, pre), views)  # same content, same views
    assert not torch.equal(views[1], views[2])  # draws differ by view number
    assert view_keys("a" * 64, 2) == ["a" * 64 + ":1", "a" * 64 + ":2"]


def test_with_views_appends_rows_with_their_labels() -> None:
    x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 2])
    views = np.stack([x + 10, x + 20], axis=1)  # (3, 2, 2)
    xs, ys = with_views(x, y, views)
    assert xs.shape == (9, 2) and ys.tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(xs[3], x[0] + 10)
    assert with_views(x, y, None)[0] is x
