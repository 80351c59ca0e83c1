"""Near-duplicates across splits: a test image that nearly copies a training image measures
memory, not skill.

The rule (docs/labels.md measured it against embedding-only rules): a query image (test, or val
against train) is flagged with the reference image whose thumbnail correlates best with its own,
when that correlation reaches a threshold calibrated on the data and the same reference is also
among the query's `neighbours` nearest by embedding (cl2 cosine). Embeddings alone fail on small
images: a resized, re-encoded 28-px Fashion-MNIST copy lands as far from its source as ordinary
look-alikes do. The thumbnail (grayscale, 16×16, mean removed, unit length) survives resizing and
JPEG; the embedding check removes look-alikes whose thumbnails agree by chance.

Calibration: `calibration_images` training images are re-encoded here (×0.8 or ×1.25, bilinear,
JPEG quality 75) and compared with their originals; q05 is the 5th percentile of those
correlations, and the threshold 1 − slack·(1 − q05). Same content in two splits (equal sha256)
is always reported, with similarity 1. Images under `min_side` pixels are compared by content
hash only: at 8 px no rule separates copies from look-alikes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from graft.core.config import AuditParams
from graft.data.images import read_image
from graft.data.manifest import labelled
from graft.labels.space import EPS, Space

COLUMNS = ("path_a", "split_a", "path_b", "split_b", "similarity")
# (query split, reference splits): what would flatter a score if it were a copy
CHECKS = (("test", ("train", "val")), ("val", ("train",)))
BLOCK = 1024  # query rows per similarity block: bounds memory at BLOCK × references floats
CALIBRATION_SCALES = (0.8, 1.25)
CALIBRATION_QUALITY = 75


def thumbnail(img: Image.Image, size: int) -> np.ndarray:
    """(size²,) float64: grayscale, size×size bilinear, minus its mean, unit length."""
    a = np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR), np.float64)
    a = a.ravel() - a.mean()
    return a / max(float(np.linalg.norm(a)), EPS)


def thumbnails(paths: Sequence[Path | str], size: int, max_pixels: int) -> np.ndarray:
    """(len(paths), size²) thumbnails of image files, decoded as every image is."""
    out = np.zeros((len(paths), size * size))
    for i, path in enumerate(paths):
        out[i] = thumbnail(read_image(path, max_pixels), size)
    return out


def reencode(img: Image.Image, path: Path, scale: float, quality: int,
             resample: Image.Resampling = Image.Resampling.BILINEAR) -> Path:
    """Write a near-copy of `img` to `path`: resized by `scale`, JPEG at `quality`. How the
    calibration makes its copies, and the benchmark its planted ones."""
    w, h = img.size
    small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    small.convert("RGB").save(path, format="JPEG", quality=int(quality))
    return path


def calibrate(paths: Sequence[Path | str], size: int, slack: float, seed: int,
              max_pixels: int) -> dict[str, float]:
    """{q05, threshold, n}: how alike our own re-encoded copies of `paths` stay."""
    rng = np.random.default_rng(seed)
    originals = [read_image(p, max_pixels) for p in paths]
    with tempfile.TemporaryDirectory(prefix="graft-calibration-") as tmp:
        copies = [reencode(img, Path(tmp) / f"{i}.jpg", float(rng.choice(CALIBRATION_SCALES)),
                           CALIBRATION_QUALITY) for i, img in enumerate(originals)]
        sims = (thumbnails(copies, size, max_pixels)
                * np.stack([thumbnail(img, size) for img in originals])).sum(axis=1)
    q05 = float(np.quantile(sims, 0.05))
    return {"q05": round(q05, 6), "threshold": round(min(1.0, 1 - slack * (1 - q05)), 6),
            "n": len(paths)}


def match(tq: np.ndarray, zq: np.ndarray, tr: np.ndarray, zr: np.ndarray, threshold: float,
          neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query row: (best reference by thumbnail, its correlation, flagged) where flagged
    = correlation ≥ threshold and that reference is among the query's `neighbours` nearest by
    embedding. t*: thumbnails, z*: cl2 embeddings; q: queries, r: references."""
    best, sim, flagged = (np.zeros(len(tq), int), np.zeros(len(tq)), np.zeros(len(tq), bool))
    k = min(neighbours, len(tr))
    for start in range(0, len(tq), BLOCK):
        part = slice(start, start + BLOCK)
        corr = tq[part] @ tr.T
        best[part], sim[part] = corr.argmax(axis=1), corr.max(axis=1)
        near = np.argpartition(-(zq[part] @ zr.T), k - 1, axis=1)[:, :k]
        flagged[part] = (sim[part] >= threshold) & (near == best[part, None]).any(axis=1)
    return best, sim, flagged


def exact_pairs(rows: pd.DataFrame, paths: list[str]) -> list[list]:
    """Pairs of labelled rows in different splits with the same content hash, the test (else
    val) image first, as the near-copies are."""
    order = {"test": 0, "val": 1, "train": 2}
    out = []
    for _, group in labelled(rows).groupby("sha256"):
        members = sorted(group.itertuples(), key=lambda r: order.get(r.split, 3))
        out += [[paths[a.Index], a.split, paths[b.Index], b.split, 1.0]
                for i, a in enumerate(members) for b in members[i + 1:] if b.split != a.split]
    return out


def near_duplicates(space: Space, paths: list[str], files: list[Path], p: AuditParams,
                    max_pixels: int) -> tuple[pd.DataFrame, dict]:
    """(the pairs, most similar first; what was compared and the calibration). `paths` names
    each manifest row for the report, `files` is its copy under data/prepared."""
    rows = space.rows
    side = np.minimum(pd.to_numeric(rows["width"], errors="coerce").to_numpy(),
                      pd.to_numeric(rows["height"], errors="coerce").to_numpy())
    lab = labelled(rows).index.to_numpy()
    big = lab[side[lab] >= p.min_side]  # NaN (an unreadable size) compares False
    info: dict = {"min_side": p.min_side, "too_small": int(len(lab) - len(big))}
    pairs = exact_pairs(rows, paths)
    train = big[rows["split"].to_numpy()[big] == "train"]
    if len(train) and len(big) > len(train):
        rng = np.random.default_rng(p.seed)
        sample = rng.choice(train, min(p.calibration_images, len(train)), replace=False)
        info["calibration"] = calibrate([files[i] for i in sample], p.thumbnail_size, p.slack,
                                        p.seed, max_pixels)
        thumbs = dict(zip(big, thumbnails([files[i] for i in big], p.thumbnail_size,
                                          max_pixels), strict=True))
        pairs += _check_splits(space, big, thumbs, paths, p, info["calibration"]["threshold"])
    table = pd.DataFrame(pairs, columns=list(COLUMNS)).drop_duplicates(["path_a", "path_b"])
    return table.sort_values("similarity", ascending=False, kind="stable"), info


def _check_splits(space: Space, big: np.ndarray, thumbs: dict, paths: list[str],
                  p: AuditParams, threshold: float) -> list[list]:
    split = space.rows["split"].to_numpy()
    out = []
    for query, refs in CHECKS:
        q, r = big[split[big] == query], big[np.isin(split[big], refs)]
        if not len(q) or not len(r):
            continue
        best, sim, flagged = match(np.stack([thumbs[i] for i in q]), space.z[q],
                                   np.stack([thumbs[i] for i in r]), space.z[r], threshold,
                                   p.neighbours)
        out += [[paths[q[i]], query, paths[r[best[i]]], split[r[best[i]]], round(float(sim[i]), 6)]
                for i in np.flatnonzero(flagged)]
    return out

