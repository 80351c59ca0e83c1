"""graft.models.heads: the feature normalisation layer computes what the numpy side computes."""

from __future__ import annotations

import numpy as np
import torch

from graft.core.config import FEATURE_NORMS
from graft.models.heads import build_head, head_logits, norm_parts, normalise_features
from tests.fixtures import blobs


def test_feature_norm_module_matches_numpy() -> None:
    x, _ = blobs(4, 0)
    for mode in FEATURE_NORMS:
        mean, l2 = norm_parts(mode, x)
        module = build_head({"norm": mode, "kind": "linear", "n_support": 0}, 16, 3)[0]
        if mean is not None:
            module.mean.copy_(torch.as_tensor(mean))
        np.testing.assert_allclose(head_logits(module, x), normalise_features(x, mean, l2),
                                   atol=1e-6)  # the mean is a float32 buffer
