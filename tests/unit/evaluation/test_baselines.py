"""The baselines learn an easy synthetic task, are seeded, and read images the shared way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graft.evaluation import baselines as B
from tests.fixtures import make_pattern_images

K = 3  # circle, square, stripes: distinct shapes and colours; chance is 1/3


def _split(root: Path, per_class: int, seed: int) -> B.Split:
    make_pattern_images(root, per_class, size=40, seed=seed)
    paths = sorted(root.rglob("*.png"))
    names = sorted({p.parent.name for p in paths})
    return B.load_split(paths, np.array([names.index(p.parent.name) for p in paths]), size=32)


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> tuple[B.Split, B.Split, B.Split]:
    root = tmp_path_factory.mktemp("baselines")
    return _split(root / "train", 8, 0), _split(root / "val", 4, 1), _split(root / "test", 10, 2)


def test_load_split_decodes_to_pixels_in_minus_one_one(splits) -> None:
    train = splits[0]
    assert train.x.shape == (3 * 8, 3, 32, 32) and train.x.dtype == np.float32
    assert train.x.min() >= -1.0 and train.x.max() <= 1.0
    assert train.x.max() > 0.8  # the near-white background survives normalisation
    np.testing.assert_array_equal(np.bincount(train.y), [8, 8, 8])


def test_pixels_logreg_learns_and_reports_its_choice(splits) -> None:
    train, val, test = splits
    result = B.pixels_logreg(train, val, test, K, c_grid=[0.01, 0.1, 1.0], seed=0)
    assert result.proba.shape == (len(test.y), K)
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (result.proba.argmax(axis=1) == test.y).mean() >= 0.8
    assert result.info["C"] in (0.01, 0.1, 1.0)
    assert 0.0 <= result.info["val_accuracy"] <= 1.0


def test_pixels_logreg_gives_zero_probability_to_a_class_missing_from_train(splits) -> None:
    train, val, test = splits
    keep = train.y != 1
    result = B.pixels_logreg(B.Split(train.x[keep], train.y[keep]), val, test, K, [1.0], seed=0)
    assert result.proba.shape == (len(test.y), K)
    assert (result.proba[:, 1] == 0).all()


def test_pixels_logreg_without_val_uses_the_default_c(splits) -> None:
    train, _, test = splits
    empty = B.Split(np.zeros((0, 3, 32, 32), np.float32), np.zeros(0, np.int64))
    result = B.pixels_logreg(train, empty, test, K, [0.01, 10.0], seed=0)
    assert result.info == {"C": 1.0, "val_accuracy": None}


def test_small_cnn_learns_keeps_best_val_epoch_and_is_seeded(splits) -> None:
    train, val, test = splits
    kw = dict(k=K, epochs=12, batch_size=8, lr=3e-3, weight_decay=5e-4, seed=0)
    first = B.small_cnn(train, val, test, **kw)
    assert (first.proba.argmax(axis=1) == test.y).mean() > 0.6  # chance is 1/3
    assert 1 <= first.info["best_epoch"] <= 12
    assert first.info["val_accuracy"] is not None
    np.testing.assert_allclose(first.proba.sum(axis=1), 1.0)
    again = B.small_cnn(train, val, test, **{**kw, "epochs": 2})
    same = B.small_cnn(train, val, test, **{**kw, "epochs": 2})
    np.testing.assert_array_equal(again.proba, same.proba)


def test_augment_crops_and_flips_within_bounds() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = B._augment(x, gen)
    assert out.shape == x.shape
    # every output pixel is either padding (0) or a value from the same image
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())
    again = B._augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    # with padding 1 the shift is at most one pixel: most of the image survives
    assert len(set(out[0].flatten().tolist()) & set(x[0].flatten().tolist())) >= 3 * 7 * 7
