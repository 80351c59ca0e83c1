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
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.core.files import sha256_file, shown
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
    # {"path", "reason"}: entries that stop the ingest; all are gathered before it stops
    refused: list[dict[str, str]] = field(default_factory=list)

    def refuse(self, path: Path | str, reason: str) -> None:
        self.refused.append({"path": shown(path), "reason": reason})


def find(source: str, path: Path | str, root: Path | str | None = None) -> Found:
    """All candidate images of `source` ("folder", "csv", "fashion-mnist", "digits"), and every
    entry refused (see `Found.refused`); root: the data root of a CSV's rows."""
    path = Path(path)
    if source == "folder":
        return from_folder(path)
    if source == "csv":
        return from_csv(path, Path(root) if root is not None else None)
    if source == "fashion-mnist":
        return from_fashion_mnist(path)
    if source == "digits":
        return from_digits()
    raise IngestError(f"unknown ingest source {source!r}")


def from_folder(root: Path) -> Found:
    """root/<class>/<image>: one folder per class; deeper files and non-images are noted, and
    entries that cannot be used (a symlink out of the root, a loop, an unreadable or empty
    class folder, a name that is not UTF-8) are refused, all of them in one pass."""
    if not root.is_dir():
        raise IngestError(f"{root}: data folder not found (ingest.source is 'folder')")
    real_root = root.resolve()
    found = Found([], [])
    classes = 0
    for entry in _entries(root, found):
        if entry.name.startswith("."):
            found.ignored.append({"path": shown(entry), "reason": "hidden entry"})
            continue
        kind = _kind(entry, real_root, found)
        if kind is None:
            continue
        if kind == "dir":
            classes += _scan_class(entry, real_root, found)
        else:
            found.ignored.append({"path": shown(entry), "reason": "file outside a class folder"})
    if classes == 0 and not found.refused:
        raise IngestError(f"{root}: no class folders; expected {root}/<class name>/<image>")
    return found


def _scan_class(folder: Path, real_root: Path, found: Found) -> int:
    """Add the class folder's images to `found`; 1 if it is a usable class folder, else 0."""
    label, before, refused = folder.name, len(found.candidates), len(found.refused)
    for entry in _entries(folder, found):
        kind = None if entry.name.startswith(".") else _kind(entry, real_root, found)
        if entry.name.startswith("."):
            found.ignored.append({"path": shown(entry), "reason": "hidden entry"})
        elif kind == "dir":
            found.ignored += [{"path": shown(Path(dirpath) / name),
                               "reason": "nested deeper than <class>/<image>"}
                              for dirpath, _dirs, files in os.walk(entry) for name in sorted(files)]
        elif kind is None:
            continue
        elif entry.suffix.lower() not in IMAGE_SUFFIXES:
            found.ignored.append({"path": shown(entry), "reason": "not an image file suffix"})
        elif kind != "file":  # reading a FIFO would block forever
            found.ignored.append({"path": shown(entry), "reason": f"not a regular file ({kind})"})
        elif (key := _hash(entry, found)) is not None:
            found.candidates.append(Candidate(label, key, str(entry), entry.name, file=entry))
    if len(found.refused) > refused:
        return 0
    if len(found.candidates) == before:
        found.refuse(folder, "class folder has no images (suffixes: "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        return 0
    return 1


def _entries(folder: Path, found: Found) -> list[Path]:
    """The folder's entries, sorted; none (and the folder refused) when it cannot be read."""
    try:
        return sorted(Path(e.path) for e in os.scandir(folder))
    except OSError as exc:
        found.refuse(folder, f"cannot read folder ({exc.strerror})")
        return []


def _kind(entry: Path, real_root: Path, found: Found) -> str | None:
    """'dir', 'file' or the kind of special file an entry is, following a symlink that stays
    in the data root; None (and the entry refused) when it cannot be used."""
    if shown(entry) != str(entry):  # bytes that are not UTF-8: no manifest or report holds it
        found.refuse(entry, "name is not valid UTF-8; rename it")
        return None
    try:
        info = entry.stat()  # follows symlinks
        target = entry.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        found.refuse(entry, f"cannot follow it ({_reason(exc)})")
        return None
    if entry.is_symlink() and not target.is_relative_to(real_root):
        found.refuse(entry, f"symlink resolves to {shown(target)}, outside the data root "
                            f"{shown(real_root)} (refused)")
        return None
    if stat.S_ISDIR(info.st_mode):
        return "dir"
    if stat.S_ISREG(info.st_mode):
        return "file"
    return {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device"}.get(stat.S_IFMT(info.st_mode), "special file")


def _reason(exc: Exception) -> str:
    """An OS error in words; Python 3.11's resolve() raises RuntimeError on a symlink loop."""
    return getattr(exc, "strerror", None) or "symlink loop"


def _real(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _hash(path: Path, found: Found) -> str | None:
    try:
        return sha256_file(path)
    except OSError as exc:
        found.refuse(path, f"cannot read file ({exc.strerror})")
        return None


def from_unlabeled(root: Path) -> Found:
    """Every image under `root`, nested folders allowed, as a candidate without a label (split
    `unlabeled`, `name` its path under root). Hidden entries, non-images and special files are
    noted; entries that cannot be used (a symlink out of the root, a loop, a name that is not
    UTF-8, an unreadable file) are refused, as in a class folder. Symlinked folders are not
    followed (noted)."""
    if not root.is_dir():
        raise IngestError(f"{root}: folder of unlabelled images not found (ingest.unlabeled_path)")
    real_root = root.resolve()
    found = Found([], [])
    for dirpath, dirs, files in os.walk(root):
        folder = Path(dirpath)
        for name in sorted(dirs):  # os.walk does not follow symlinked folders: say so
            if name.startswith(".") or (folder / name).is_symlink():
                reason = ("hidden entry" if name.startswith(".")
                          else "symlinked folder, not followed")
                found.ignored.append({"path": shown(folder / name), "reason": reason})
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            entry = folder / name
            if name.startswith("."):
                found.ignored.append({"path": shown(entry), "reason": "hidden entry"})
            elif entry.suffix.lower() not in IMAGE_SUFFIXES:
                found.ignored.append({"path": shown(entry), "reason": "not an image file suffix"})
            elif (kind := _kind(entry, real_root, found)) is None:
                continue
            elif kind != "file":  # reading a FIFO would block forever
                found.ignored.append({"path": shown(entry),
                                      "reason": f"not a regular file ({kind})"})
            elif (key := _hash(entry, found)) is not None:
                found.candidates.append(Candidate(
                    "", key, str(entry), entry.relative_to(root).as_posix(), UNLABELED, entry))
    return found


def from_csv(csv_path: Path, root: Path | None = None) -> Found:
    """A CSV with `path,label` and optional `split`; relative paths start at the CSV's folder.
    Every listed file must resolve (symlinks followed) inside `root` (default: the CSV's
    folder) and be an image file by suffix; all rows that break a rule are refused together."""
    if not csv_path.is_file():
        raise IngestError(f"{csv_path}: CSV file not found (ingest.source is 'csv')")
    root = root if root is not None else csv_path.parent
    if not root.is_dir():
        raise IngestError(f"{root}: data root not found (ingest.root)")
    found = Found([], [])
    line = 1
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise IngestError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}; "
                                  "expected path,label[,split]")
            for row in reader:
                line = reader.line_num
                _csv_row(csv_path, line, row, root.resolve(), found)
    except UnicodeDecodeError as exc:
        raise IngestError(f"{csv_path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:  # a NUL byte, a field over csv's size limit
        raise IngestError(f"{csv_path}, line {line + 1}: not readable as CSV ({exc})") from None
    if not found.candidates and not found.refused:
        raise IngestError(f"{csv_path}: no rows")
    return found


def _csv_row(csv_path: Path, line: int, row: dict[str, str | None], root: Path,
             found: Found) -> None:
    where = f"{shown(csv_path)}, line {line}"
    text, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    split = (row.get("split") or "").strip() or None  # empty: ingest chooses the split
    file = Path(text) if Path(text).is_absolute() else csv_path.parent / text
    real = _real(file)
    if not text:
        problem = "empty path"
    elif not label:
        problem = f"empty label for {text!r}"
    elif split is not None and split not in SPLITS:
        problem = f"split {split!r} is not one of {', '.join(SPLITS)}"
    elif real is None:
        problem = f"{text!r}: cannot follow it (symlink loop)"
    elif not real.is_relative_to(root):
        problem = (f"{text!r} resolves to {shown(real)}, outside the data root "
                   f"{shown(root)} (ingest.root; default: the CSV's folder): refused")
    elif file.suffix.lower() not in IMAGE_SUFFIXES:
        problem = f"{text!r} is not an image file by its suffix: refused"
    elif not file.is_file():
        problem = f"image {text!r} not found, or not a regular file (looked for {shown(file)})"
    else:
        if (key := _hash(file, found)) is not None:
            found.candidates.append(
                Candidate(label, key, f"{csv_path}:{line} {file}", file.name, split, file))
        return
    found.refused.append({"path": where, "reason": problem})


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
