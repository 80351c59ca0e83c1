"""graft.data.images: Preprocessing.normalise is the one normalisation, the same for numpy arrays
and torch tensors."""

from __future__ import annotations

import numpy as np
import torch

from graft.data.images import Preprocessing


def test_normalise_is_the_same_for_numpy_and_torch_and_matches_the_formula() -> None:
    pre = Preprocessing(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # uneven channels
    hwc = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    nchw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    ours = pre.normalise(nchw)
    assert ours.dtype == np.float32 and ours.shape == (5, 3, 16, 16)
    expected = np.moveaxis((hwc.astype(np.float32) / 255.0 - np.asarray(pre.mean, np.float32))
                           / np.asarray(pre.std, np.float32), -1, -3)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(pre.normalise(torch.from_numpy(nchw)).numpy(), ours)
    np.testing.assert_array_equal(pre.normalise(nchw[0]), ours[0])  # one image (3, H, W)
