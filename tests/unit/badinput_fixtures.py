"""Builders for tiny image trees, good and bad, shared by the ingest / validate / bad-input tests.

Every image written here has unique content (ingest drops repeated content), and the trees are a
few 16×16 files so the tests run in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graft.config import Params, params_from_dict

_counter = [0]  # makes every generated image different from every other one


def unique_pixels(size: tuple[int, int] = (16, 16), channels: int = 3) -> np.ndarray:
    """uint8 (H, W, C) noise seeded by a running counter: never the same twice in a session."""
    _counter[0] += 1
    rng = np.random.default_rng(_counter[0])
    w, h = size
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def write_image(path: Path, size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(unique_pixels(size)).save(path, format=fmt)
    return path


def image_tree(root: Path, per_class: dict[str, int], suffix: str = ".png") -> Path:
    """root/<class>/<class>_<i><suffix>, `per_class[class]` images each."""
    fmt = "JPEG" if suffix in (".jpg", ".jpeg") else "PNG"
    for label, n in per_class.items():
        for i in range(n):
            write_image(root / label / f"{label}_{i}{suffix}", fmt=fmt)
    return root


def tree_digest(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under root: files by sha256, symlinks by target, folders by name.

    Compared before and after a run to prove the input was not modified."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@contextlib.contextmanager
def unchanged(root: Path) -> Iterator[None]:
    """Assert that the tree under `root` is byte-for-byte the same after the block, even when
    the block raises."""
    before = tree_digest(root)
    try:
        yield
    finally:
        assert tree_digest(root) == before, f"{root} was modified"


def params(source: str, path: Path | str, ingest: dict[str, Any] | None = None,
           validate: dict[str, Any] | None = None) -> Params:
    """Params for a tiny tree: everything to train unless `ingest` says otherwise."""
    section = {"source": source, "path": str(path), "shots_per_class": None, "val_per_class": 0,
               "test_size": None, "test_fraction": 0.0, "seed": 0, **(ingest or {})}
    checks = {"min_side": 8, "min_per_class": 1, **(validate or {})}
    return params_from_dict({"ingest": section, "validate": checks})


def png_bytes(width: int, height: int, rows: int) -> bytes:
    """A grayscale PNG whose header declares width×height but carries only `rows` rows of data:
    a decompression bomb when the size is large (nothing the size of the image is ever built)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    raw = (b"\0" + b"\0" * width) * rows  # filter byte + one row of black, `rows` times
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Path:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
