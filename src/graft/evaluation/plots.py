"""The evaluate stage's plots: the confusion matrix as a long CSV for `dvc plots` and as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graft.core.files import atomic_output, write_csv


def write_confusion(csv_path: Path, png_path: Path, names: list[str], y_true: np.ndarray,
                    y_pred: np.ndarray, confusion: np.ndarray | list) -> None:
    """`csv_path` (one row per test image: actual,predicted) and `png_path`, the matrix drawn."""
    cm = np.asarray(confusion)
    write_csv(csv_path, ["actual", "predicted"],
              [(names[t], names[p]) for t, p in zip(y_true, y_pred, strict=True)])
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    k = len(names)
    side = max(4.0, 0.6 * k + 2)  # inches: leaves room for ten classes' names and counts
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Actual class")
    ax.set_title(f"Confusion matrix, test split ({int(cm.sum())} images)")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            dark = top > 0 and cm[i, j] > top / 2
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    fig.tight_layout()
    with atomic_output(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


