"""The space graft.labels works in: the manifest's rows with their cached embeddings, centred on
the mean embedding of every image of the project (labelled and unlabelled) and L2-normalised
("cl2", SimpleShot's CL2N).

Why centred: one dataset's embeddings share a large common direction, so raw cosines are all high
and differ little; subtracting the dataset's own mean leaves what tells its images apart. On
Fashion-MNIST with 10 labels, nearest class mean on cl2 features gets 56% where the probe on
standardised features gets 34% (docs/labels.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from graft.core.config import Params
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.store import load_features

EPS = 1e-12  # guards the division of an all-zero row


def centred_l2(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """float64 (N, D): each row minus `mean`, scaled to unit length."""
    z = np.asarray(x, np.float64) - mean
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS)


@dataclass(frozen=True)
class Space:
    """Every manifest row (`rows`, index 0..N-1) and its cl2 embedding (row i of `z`)."""

    rows: pd.DataFrame
    z: np.ndarray

    def where(self, mask: np.ndarray | pd.Series) -> np.ndarray:
        """Row numbers where `mask` holds."""
        return np.flatnonzero(np.asarray(mask, bool))


def project_space(params: Params, layout: Layout) -> Space:
    """The manifest and its cached embeddings (the backbone the stages use) in cl2; a missing
    embedding raises FeaturesError ("run the features stage")."""
    rows = read_manifest(layout.manifest).reset_index(drop=True)
    feats = load_features(layout, params, rows)
    mean = feats.mean(axis=0) if len(feats) else 0.0
    return Space(rows, centred_l2(feats, mean))
