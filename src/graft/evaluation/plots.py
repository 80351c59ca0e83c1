"""Graft's plots: the confusion matrix (a long CSV for `dvc plots` and a PNG) and the training
curve (a PNG) beside it in plots/."""

from __future__ import annotations

from collections.abc import Sequence
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




def write_training_curve(png_path: Path, header: Sequence[str], rows: Sequence[Sequence],
                         title: str) -> None:
    """plots/training.png from the finetune stage's curve: loss and validation accuracy per epoch
    for a trained network, else validation accuracy per setting tried (C, kernel, member)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    if "epoch" in cols:
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        for key in ("train_loss", "val_loss"):
            values = [_number(v) for v in cols.get(key, [])]
            loss_ax.plot(cols["epoch"], values, marker="o", label=key.replace("_", " "))
        loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
        loss_ax.legend()
        acc_ax.plot(cols["epoch"], [_number(v) for v in cols["val_accuracy"]], marker="o")
        acc_ax.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    else:
        settings = [name for name in header if name not in ("step", "val_accuracy")]
        labels = [", ".join(f"{name}={_short(row[header.index(name)])}" for name in settings)
                  for row in rows]
        fig, acc_ax = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 2), 4.5), dpi=100)
        acc_ax.plot(range(len(rows)), [_number(v) for v in cols["val_accuracy"]], marker="o")
        acc_ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
        acc_ax.set(ylabel="validation accuracy", title="settings tried")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")  # a missing value (no validation split) leaves a gap


def _short(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
