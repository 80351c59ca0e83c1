"""Test images that nearly copy a training image, in the evaluate stage's figures.

Reads the audit stage's reports/near_duplicates.csv (graft.labels.duplicates writes it) and
scores the model again without the test images it pairs with a training or validation image, so
the report shows how much of the accuracy such leaks might carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from graft.evaluation import metrics as stats


def read_pairs(path: Path) -> pd.DataFrame:
    """reports/near_duplicates.csv as a DataFrame (paths as strings)."""
    return pd.read_csv(path, dtype={"path_a": str, "split_a": str, "path_b": str,
                                    "split_b": str}, keep_default_na=False)


def copies_training(test_paths: list[str], pairs: pd.DataFrame) -> np.ndarray:
    """Which of the test images (by report path) nearly copy a training or validation image."""
    leaked = pairs.loc[(pairs["split_a"] == "test") & pairs["split_b"].isin(["train", "val"]),
                       "path_a"]
    return np.isin(np.asarray(test_paths, dtype=object), leaked.to_numpy(dtype=object))


def without_near_copies(pairs_file: Path, test_paths: list[str], y: np.ndarray,
                        proba: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """The evaluate stage's figures without the test images that nearly copy a training or
    validation image: their number, and accuracy with its 95% bootstrap interval on the rest.
    Nulls when the audit's report is missing (the audit stage did not run)."""
    if not pairs_file.exists():
        return {"test_near_copies": None, "accuracy_without_near_copies": None,
                "accuracy_without_near_copies_ci": [None, None]}
    keep = ~copies_training(test_paths, read_pairs(pairs_file))
    figures: dict[str, Any] = {"test_near_copies": int((~keep).sum()),
                               "n_test_without_near_copies": int(keep.sum())}
    if not keep.any():
        return figures | {"accuracy_without_near_copies": None,
                          "accuracy_without_near_copies_ci": [None, None]}
    point = stats.headline(y[keep], proba[keep])["accuracy"]
    samples = stats.bootstrap(y[keep], [proba[keep]], resamples, seed)[0]["accuracy"]
    lo, hi = stats.interval(samples) if resamples else (None, None)
    return figures | {"accuracy_without_near_copies": float(point),
                      "accuracy_without_near_copies_ci": [lo, hi]}
