"""Where the ingest stage finds images: a class-per-folder tree, a CSV list, or a bundled dataset.

Each source returns every candidate image with its label and a content hash, without choosing
splits and without writing anything: ingest.py de-duplicates, splits and copies. Sources never
modify what they read. Generated datasets (Fashion-MNIST, scikit-learn digits) keep their pixels
in memory; only the images that end up in the manifest are ever encoded to PNG.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.core.files import sha256_file
from graft.data.images import IMAGE_SUFFIXES
from graft.data.manifest import SPLITS, UNLABELED

# Official Fashion-MNIST class names in label order; "/" would be a path separator, hence "_".
FASHION_MNIST_CLASSES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_UBYTE = 0x08  # idx element-type code for unsigned bytes


class IngestError(ValueError):
    """Input that ingest cannot use; the message names the file or folder and the rule."""


@dataclass(frozen=True)
class Candidate:
    """One image a source offers. Exactly one of `file` and `pixels` is set."""

    label: str
    key: str  # content hash: sha256 of the file bytes; of shape + pixels for generated images
    origin: str  # where it came from, for reports: a path, "file[index]" or "csv:line path"
    name: str  # file name to use under images/<label>/
    split: str | None = None  # fixed by the source: official test set or a CSV split column
    file: Path | None = None  # copied byte for byte
    pixels: np.ndarray | None = field(default=None, compare=False)  # uint8 (H, W) → PNG


@dataclass
class Found:
    candidates: list[Candidate]
    ignored: list[dict[str, str]]  # {"path", "reason"}: skipped files, listed in the report


def find(source: str, path: Path | str) -> Found:
    """All candidate images of `source` ("folder", "csv", "fashion-mnist", "digits")."""
    path = Path(path)
    if source == "folder":
        return from_folder(path)
    if source == "csv":
        return from_csv(path)
    if source == "fashion-mnist":
        return from_fashion_mnist(path)
    if source == "digits":
        return from_digits()
    raise IngestError(f"unknown ingest source {source!r}")


def from_folder(root: Path) -> Found:
    """root/<class>/<image>: one folder per class; deeper files and non-images are noted."""
    if not root.is_dir():
        raise IngestError(f"{root}: data folder not found (ingest.source is 'folder')")
    real_root = root.resolve()
    found = Found([], [])
    classes = 0
    for entry in _entries(root):
        if entry.name.startswith("."):
            found.ignored.append({"path": str(entry), "reason": "hidden entry"})
        elif _inside(entry, real_root).is_dir():
            _scan_class(entry, real_root, found)
            classes += 1
        else:
            found.ignored.append({"path": str(entry), "reason": "file outside a class folder"})
    if classes == 0:
        raise IngestError(f"{root}: no class folders; expected {root}/<class name>/<image>")
    return found


def _scan_class(folder: Path, real_root: Path, found: Found) -> None:
    label, before = folder.name, len(found.candidates)
    for entry in _entries(folder):
        target = _inside(entry, real_root)
        if target.is_dir():
            for dirpath, _dirs, files in os.walk(entry):
                for name in sorted(files):
                    found.ignored.append({"path": str(Path(dirpath) / name),
                                          "reason": "nested deeper than <class>/<image>"})
        elif entry.name.startswith("."):
            found.ignored.append({"path": str(entry), "reason": "hidden entry"})
        elif entry.suffix.lower() not in IMAGE_SUFFIXES:
            found.ignored.append({"path": str(entry), "reason": "not an image file suffix"})
        else:
            found.candidates.append(
                Candidate(label, _hash(entry), str(entry), entry.name, file=entry))
    if len(found.candidates) == before:
        raise IngestError(f"{folder}: class folder has no images (suffixes: "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))})")


def _entries(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in os.scandir(folder))


def _inside(path: Path, real_root: Path) -> Path:
    """The resolved path; a symlink that leads outside the data root is refused."""
    target = path.resolve()
    if path.is_symlink() and not target.is_relative_to(real_root):
        raise IngestError(f"{path}: symlink resolves to {target}, outside the data root "
                          f"{real_root}: refused")
    return target


def _hash(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise IngestError(f"{path}: cannot read file ({exc.strerror})") from None


def from_unlabeled(root: Path) -> Found:
    """Every image under `root`, nested folders allowed, as a candidate without a label (split
    `unlabeled`, `name` its path under root); hidden entries, non-images and symlinked folders
    are noted, a symlink that leads outside `root` is refused, as in a class folder."""
    if not root.is_dir():
        raise IngestError(f"{root}: folder of unlabelled images not found (ingest.unlabeled_path)")
    real_root = root.resolve()
    found = Found([], [])
    for dirpath, dirs, files in os.walk(root):
        folder = Path(dirpath)
        for name in sorted(dirs):  # os.walk does not follow symlinked folders: say so
            if name.startswith(".") or (folder / name).is_symlink():
                _inside(folder / name, real_root)
                reason = ("hidden entry" if name.startswith(".")
                          else "symlinked folder, not followed")
                found.ignored.append({"path": str(folder / name), "reason": reason})
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            entry = folder / name
            if name.startswith("."):
                found.ignored.append({"path": str(entry), "reason": "hidden entry"})
            elif entry.suffix.lower() not in IMAGE_SUFFIXES:
                found.ignored.append({"path": str(entry), "reason": "not an image file suffix"})
            else:
                _inside(entry, real_root)
                found.candidates.append(Candidate(
                    "", _hash(entry), str(entry), entry.relative_to(root).as_posix(),
                    UNLABELED, entry))
    return found


def from_csv(csv_path: Path) -> Found:
    """A CSV with `path,label` and optional `split`; relative paths start at the CSV's folder."""
    if not csv_path.is_file():
        raise IngestError(f"{csv_path}: CSV file not found (ingest.source is 'csv')")
    found = Found([], [])
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise IngestError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                                  "expected path,label[,split]")
            for row in reader:
                found.candidates.append(_csv_row(csv_path, reader.line_num, row))
    except UnicodeDecodeError as exc:
        raise IngestError(f"{csv_path}: not UTF-8 text ({exc.reason})") from None
    if not found.candidates:
        raise IngestError(f"{csv_path}: no rows")
    return found


def _csv_row(csv_path: Path, line: int, row: dict[str, str | None]) -> Candidate:
    where = f"{csv_path}, line {line}"
    text, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    split = (row.get("split") or "").strip() or None  # empty: ingest chooses the split
    if not text:
        raise IngestError(f"{where}: empty path")
    if not label:
        raise IngestError(f"{where}: empty label for {text!r}")
    if split is not None and split not in SPLITS:
        raise IngestError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    file = Path(text) if Path(text).is_absolute() else csv_path.parent / text
    if not file.is_file():
        raise IngestError(f"{where}: image {text!r} not found (looked for {file})")
    return Candidate(label, _hash(file), f"{csv_path}:{line} {file}", file.name, split, file)


def from_fashion_mnist(folder: Path) -> Found:
    """The official idx files (gzipped or not); the official test set is the test split."""
    if not folder.is_dir():
        raise IngestError(f"{folder}: Fashion-MNIST folder not found (Debian package "
                          "dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist)")
    found = Found([], [])
    for set_name, split in (("train", None), ("t10k", "test")):
        images_file = _idx_file(folder, f"{set_name}-images-idx3-ubyte")
        labels_file = _idx_file(folder, f"{set_name}-labels-idx1-ubyte")
        images, labels = _read_idx(images_file, 3), _read_idx(labels_file, 1)
        if len(images) != len(labels):
            raise IngestError(f"{labels_file}: {len(labels)} labels for {len(images)} images "
                              f"in {images_file}")
        if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise IngestError(f"{labels_file}: label {labels.max()} outside 0..9")
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            found.candidates.append(Candidate(
                FASHION_MNIST_CLASSES[label], _pixel_key(pixels), f"{images_file}[{i}]",
                f"{set_name}-{i:05d}.png", split, pixels=pixels))
    return found


def _idx_file(folder: Path, stem: str) -> Path:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    raise IngestError(f"{folder}: missing {stem} (or {stem}.gz), an official Fashion-MNIST file")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file: 2 zero bytes, type code, ndim, big-endian uint32 sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise IngestError(f"{path}: cannot read idx file ({exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE or data[3] != ndim:
        raise IngestError(f"{path}: not an idx file of {ndim}-d unsigned bytes (bad header)")
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data[4:header], dtype=">u4"))
    if len(data) != header + int(np.prod(shape)):
        raise IngestError(f"{path}: {len(data) - header} data bytes, header says shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def from_digits() -> Found:
    """scikit-learn's bundled 8×8 digits, intensities 0..16 scaled to 0..255; no test set."""
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    candidates = [
        Candidate(str(label), _pixel_key(pixels), f"sklearn.datasets.load_digits[{i}]",
                  f"digits-{i:04d}.png", pixels=pixels)
        for i, (pixels, label) in enumerate(zip(images, digits.target, strict=True))
    ]
    return Found(candidates, [])


def _pixel_key(pixels: np.ndarray) -> str:
    """Content hash of a generated image: equal pixels encode to equal PNG bytes."""
    digest = hashlib.sha256(repr(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()
