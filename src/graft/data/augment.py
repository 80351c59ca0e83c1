"""Training-time augmentation of in-memory uint8 image batches.

Fine-tuning decodes each image once (`Preprocessing.to_uint8`: resized and centre-cropped) and
keeps the uint8 tensors in memory; every batch is augmented per image here, then normalised by
`Preprocessing.normalise`, so training and inference inputs agree. The augmented views of the
embedding store (graft.embeddings.views) draw from the same transform.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchvision.transforms import v2

# Mild on purpose: few-shot images, and a pretrained network that already knows these invariances.
CROP_SCALE = (0.7, 1.0)  # fraction of the image area kept by RandomResizedCrop
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}


def build_augment(size: int) -> v2.Transform:
    """Random crop (70–100% of the area, resized back to size×size), flip and colour jitter on
    one uint8 tensor (3, size, size)."""
    # here, not at the top: torchvision's import costs ~1.5 s (it loads torch._dynamo), which
    # every stage that merely reads the embedding store would pay
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(**JITTER),
    ])


def augment_batch(images: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """uint8 (B, 3, H, W) → uint8 (B, 3, H, W), each image with its own random draw
    (a v2 transform given a whole batch would draw one crop for all of it)."""
    return torch.stack([transform(img) for img in images])
