"""A saved model's logits from the embedding store instead of from the images.

A model fitted by a feature strategy (or an ensemble of them) is the pretrained backbone, frozen,
with a head on its pooled features; the store already holds those features for every manifest
image, computed once by the features stage. Scoring such a model is then the head on the cached
rows: milliseconds instead of a pass of the backbone over every test image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from graft.core.layout import Layout
from graft.embeddings.store import embeddings, read_store, store_file
from graft.models.heads import head_logits


def logits_from_store(model: nn.Module, meta: dict[str, Any], layout: Layout,
                      rows: pd.DataFrame) -> np.ndarray | None:
    """The checkpoint's logits (float64 (len(rows), k)) on `rows` from their cached
    embeddings, when its network is frozen pretrained backbone(s) with a head
    (info.frozen_backbone) and every row is in the store(s); else None (score the images)."""
    if not meta.get("info", {}).get("frozen_backbone"):
        return None
    size = meta["preprocessing"].size
    network = meta.get("network") or {}
    if network.get("kind") == "ensemble":
        names = list(dict.fromkeys(m["backbone"] for m in network["members"]))
    else:
        names = [meta["backbone"]]
    features = {}
    for name in names:
        store = read_store(store_file(layout, name, size))
        if not set(rows["sha256"]) <= set(store):
            return None
        features[name] = embeddings(store, rows)
    if network.get("kind") == "ensemble":
        return model.head_logits(features)
    return head_logits(model.classifier, features[names[0]])
