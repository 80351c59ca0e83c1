"""Augmented views: embeddings of N augmented copies of each labelled image (`features.views`).

The feature strategies (linear_probe, svm, prototype, and so ensemble and auto) fit on each
training row's embedding plus its views' embeddings, all with the row's label: cheap
augmentation for a frozen backbone, since a view costs one forward pass, once (views are cached
by content hash like the images). What ships is unchanged: one image in, one embedding.

View 1 is the horizontal mirror; views 2.. are draws of the fine-tuning augmentation
(graft.data.augment: random resized crop, flip, colour jitter), seeded by the image's content hash
and the view number, so a view's embedding is the same on every run and can be cached.

Views belong to their image: wherever rows are held out (validation, k-fold), the held-out rows'
views are held out with them, and held-out rows are scored on the image alone. `with_views` is
the one place training rows are expanded, called by every fitter on the rows it fits on.
"""

from __future__ import annotations

import numpy as np
import torch

from graft.data.augment import augment_batch, build_augment
from graft.data.images import Preprocessing


def make_views(images: torch.Tensor, shas: list[str], n_views: int,
               pre: Preprocessing) -> torch.Tensor:
    """uint8 images (B, 3, S, S) → normalised float32 views (B·N, 3, S, S), image-major
    (image 0's views 1..N, then image 1's, …), matching the store's `view_keys`."""
    transform = build_augment(pre.size)
    out = []
    for image, sha in zip(images, shas, strict=True):
        for i in range(1, n_views + 1):
            if i == 1:
                out.append(image.flip(-1))
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(sha[:15], 16) + i)  # content + view number: reproducible
                out.append(augment_batch(image[None], transform)[0])
    return pre.normalise(torch.stack(out))


def with_views(x: np.ndarray, y: np.ndarray, views: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Training rows `x` (n, D) with labels `y`, followed by their views (n, N, D) as extra rows
    carrying the same labels; `x`, `y` unchanged when `views` is None or has no views."""
    if views is None or views.shape[1] == 0:
        return x, y
    n, n_views, dim = views.shape
    if n != len(x):
        raise ValueError(f"{n} rows of views for {len(x)} feature rows")
    return (np.concatenate([x, views.reshape(n * n_views, dim).astype(x.dtype, copy=False)]),
            np.concatenate([y, np.repeat(y, n_views)]))
