"""The manifest: one row per ingested image; the contract between ingest and every later stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from graft.core.files import atomic_output

COLUMNS = ("path", "label", "split", "sha256", "width", "height", "mode", "origin")
# `origin`: where ingest found the image (the user's file path, or dataset file[index]), so
# that reports name a file the user can find; manifests written before it (or by hand) lack it
OPTIONAL = {"origin": ""}
SPLITS = ("train", "val", "test")  # the labelled splits
# images without a label (ingest.unlabeled_path): embedded, audited and suggested for labelling,
# never trained on, validated against or scored
UNLABELED = "unlabeled"


class ManifestError(ValueError):
    """A manifest that later stages cannot use; the message names the file."""


def read_manifest(path: Path | str) -> pd.DataFrame:
    """Read manifest.csv; `path` column stays relative to the manifest's folder, and no row may
    leave it (a hand-edited or pulled manifest must not make a stage read /etc/shadow)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found; run the ingest stage first")
    if not path.is_file():
        raise ManifestError(f"{path}: not a regular file")
    try:
        df = pd.read_csv(path, dtype={"path": str, "label": str, "split": str, "sha256": str,
                                      "mode": str, "origin": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable manifest ({str(exc)[:200]})") from None
    missing = [c for c in COLUMNS if c not in df.columns and c not in OPTIONAL]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}")
    escaping = [p for p in df["path"] if Path(p).is_absolute() or ".." in Path(p).parts]
    if escaping:
        raise ManifestError(f"{path}: {len(escaping)} path(s) leave {path.parent} (first "
                            f"{escaping[0]!r}); run the ingest stage again")
    return _with_optional(df)


def read_origins(path: Path | str) -> dict[str, str]:
    """data/prepared/origins.csv: manifest path → the user's own file it was copied from
    (empty when there is none: manifests written by hand or by older versions)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        return dict(zip(df["path"], df["origin"], strict=True))
    except (ValueError, KeyError, UnicodeDecodeError):  # only for messages: never fatal
        return {}


def write_manifest(path: Path | str, df: pd.DataFrame) -> None:
    with atomic_output(path) as tmp:
        _with_optional(df).loc[:, list(COLUMNS)].to_csv(tmp, index=False)


def _with_optional(df: pd.DataFrame) -> pd.DataFrame:
    missing = {c: v for c, v in OPTIONAL.items() if c not in df.columns}
    return df.assign(**missing) if missing else df


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a label (train, val, test): every row but the unlabelled ones."""
    return df.loc[df["split"] != UNLABELED]


def origins(df: pd.DataFrame, manifest_path: Path | str) -> list[str]:
    """Where each row's image came from (`origin`), or its copy under data/prepared when the
    manifest does not say: the path a report shows the user."""
    copies = absolute_paths(df, manifest_path)
    return [o or str(c) for o, c in zip(df["origin"], copies, strict=True)]


def class_names(df: pd.DataFrame) -> list[str]:
    """The classes a model predicts: the labels seen in training, sorted."""
    return sorted(df.loc[df["split"] == "train", "label"].unique().tolist())


def absolute_paths(df: pd.DataFrame, manifest_path: Path | str) -> list[Path]:
    root = Path(manifest_path).parent
    return [root / p for p in df["path"]]


def encode_labels(labels: pd.Series, classes: list[str], manifest: Path | str, split: str,
                  whose: str = "the training images") -> np.ndarray:
    """Label strings → indices into `classes`; ManifestError naming the manifest, the split and
    the unknown labels when some label is not a class (of `whose`: the training images, the
    model)."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ManifestError(
            f"{manifest}: {split} label(s) {', '.join(map(repr, unknown))} are not among the "
            f"classes of {whose} ({', '.join(classes)}); retrain on this manifest or fix the "
            "labels")
    return np.array([index[label] for label in labels], np.int64)
