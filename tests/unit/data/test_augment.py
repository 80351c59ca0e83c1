"""graft.data.augment: the fine-tuning augmentation keeps uint8 batches' shape and is seeded."""

from __future__ import annotations

import numpy as np
import torch

from graft.data import augment


def test_augment_keeps_shape_and_dtype_and_is_seeded() -> None:
    hwc = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    nchw = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    transform = augment.build_augment(16)
    torch.manual_seed(0)
    out = augment.augment_batch(nchw, transform)
    assert out.shape == nchw.shape and out.dtype == torch.uint8
    torch.manual_seed(0)
    assert torch.equal(out, augment.augment_batch(nchw, transform))  # seeded
    assert not torch.equal(out, nchw)
