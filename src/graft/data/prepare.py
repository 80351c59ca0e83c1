"""How a dataset becomes data/prepared: de-duplicated, split, copied.

`prepare` takes every candidate a source offers (graft.data.sources), drops repeated content (the
same bytes must never sit in two splits, or test accuracy measures memory), draws the test / val /
train splits reproducibly from `ingest.seed`, adds the images of `ingest.unlabeled_path` (split
`unlabeled`, no label; a copy of a labelled image is left out), and copies only the chosen
images, byte for byte, into a fresh data/prepared that replaces the previous one in a final
rename. Images are not judged
here: a file that does not decode is still listed (mode "unreadable") so validate can report it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from graft.core.config import IngestParams
from graft.core.files import output_error, sha256_file, shown, temp_dir, write_csv
from graft.core.layout import Layout
from graft.data.images import ImageError, probe, read_image
from graft.data.manifest import COLUMNS, SPLITS, UNLABELED, write_manifest
from graft.data.sources import Candidate, Found, IngestError, find, from_unlabeled

MAX_STEM_BYTES = 120  # keeps output names well under the 255-byte file-name limit


@dataclass
class Prepared:
    """What `prepare` did: the manifest it wrote and what it left out, for the report."""

    manifest: pd.DataFrame
    found: Found
    duplicates: list[dict]  # same content, same label: all but the first dropped
    conflicts: list[dict]  # same content under two labels: none kept
    unlabeled_copies: list[dict] = dataclasses.field(default_factory=list)  # of labelled images


def prepare(p: IngestParams, layout: Layout) -> Prepared:
    """Find the candidates of `p.source` (and `p.unlabeled_path`), de-duplicate, split, and
    write data/prepared.

    Nothing is copied while any entry is refused: every refused entry is named in one
    IngestError (with the files that would not decode, which validate would name next)."""
    source = layout.root / p.path  # relative to the project root, as in dvc.yaml
    root = layout.root / p.root if p.root is not None else None
    unlabeled = layout.root / p.unlabeled_path if p.unlabeled_path is not None else None
    for path, key in ((source, "ingest.path"), (root, "ingest.root"),
                      (unlabeled, "ingest.unlabeled_path")):
        inside = layout.output_containing(path) if path is not None else None
        if inside is not None:  # ingest would read what it is about to replace
            raise IngestError(f"{path}: {key} lies inside {inside}, which Graft writes; "
                              "refused (point it at your own data)")
    found = find(p.source, source, root)
    for cand in found.candidates:
        inside = layout.output_containing(cand.file) if cand.file is not None else None
        if inside is not None:
            found.refuse(cand.file, f"lies inside {inside}, which Graft writes (refused)")
    if found.refused:
        raise IngestError(refusal_message(source, found))
    kept, duplicates, conflicts = deduplicate(found.candidates)
    splits = assign_splits(kept, p)
    chosen = [(c, s) for c, s in zip(kept, splits, strict=True) if s is not None]
    chosen.sort(key=lambda cs: (SPLITS.index(cs[1]), cs[0].label))  # stable: source order within
    copies: list[dict] = []
    if p.unlabeled_path is not None:
        unlabeled, copies = find_unlabeled(p, layout, found)
        chosen += [(c, UNLABELED) for c in unlabeled]
    return Prepared(write_prepared(layout, chosen), found, duplicates, conflicts, copies)


def find_unlabeled(p: IngestParams, layout: Layout, labelled: Found
                   ) -> tuple[list[Candidate], list[dict]]:
    """The unlabelled candidates to keep, and a report entry for each copy of a labelled image
    (any the source offers, in a split or not) left out. A repeat within the folder keeps the
    first; it and the folder's skipped files are added to `labelled.ignored`."""
    root, data = layout.root / p.unlabeled_path, layout.root / p.path
    if p.source == "folder" and (root.resolve().is_relative_to(data.resolve())
                                 or data.resolve().is_relative_to(root.resolve())):
        raise IngestError(f"{root}: ingest.unlabeled_path overlaps the labelled folder {data}; "
                          "its images would be read twice: keep the two folders apart")
    found = from_unlabeled(root)
    if found.refused:
        raise IngestError(refusal_message(root, found))
    labels = {c.key: c for c in labelled.candidates}
    kept: dict[str, Candidate] = {}
    copies = []
    for cand in found.candidates:
        if cand.key in labels:
            copies.append({"content": cand.key, "dropped": cand.origin,
                           "labelled": labels[cand.key].origin})
        elif cand.key in kept:
            found.ignored.append({"path": cand.origin,
                                  "reason": f"same content as {kept[cand.key].origin}"})
        else:
            kept[cand.key] = cand
    labelled.ignored += found.ignored
    return list(kept.values()), copies


def refusal_message(source: Path, found: Found) -> str:
    """Every refused entry, one line each, then the files that would not decode."""
    lines = [f"{shown(source)}: ingest refused {len(found.refused)} entr"
             f"{'y' if len(found.refused) == 1 else 'ies'}; nothing was copied. Fix them all, "
             "then run ingest again:"]
    lines += [f"  {r['path']}: {r['reason']}" for r in found.refused]
    broken = []
    for cand in found.candidates:
        if cand.file is not None and shown(cand.file) not in {r["path"] for r in found.refused}:
            try:
                read_image(cand.file)
            except ImageError as exc:
                broken.append(f"  {shown(cand.file)}: {exc.problem} (validate rule decodes)")
    if broken:
        lines += [f"and {len(broken)} file(s) that do not decode, which validate would stop "
                  "on next:", *broken]
    return "\n".join(lines)


def deduplicate(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[dict], list[dict]]:
    """Keep the first of each content; the same content under two labels keeps none.

    Returns (kept, duplicates, conflicts); the last two are report entries."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for cand in candidates:
        groups[cand.key].append(cand)
    kept, duplicates, conflicts = [], [], []
    for key, group in groups.items():
        labels = sorted({c.label for c in group})
        if len(labels) > 1:
            conflicts.append({"content": key, "labels": labels,
                              "files": [{"origin": c.origin, "label": c.label} for c in group]})
            continue
        kept.append(group[0])
        duplicates += [{"content": key, "dropped": c.origin, "kept": group[0].origin}
                       for c in group[1:]]
    order = {id(c): i for i, c in enumerate(candidates)}
    kept.sort(key=lambda c: order[id(c)])
    return kept, duplicates, conflicts


def assign_splits(candidates: Sequence[Candidate], p: IngestParams) -> list[str | None]:
    """A split per candidate (None = not used), stratified by label.

    test: the source's own test set if it has one, else `test_fraction` of each class; then
    capped at `test_size` images in proportion to class sizes. val: the source's own val rows if
    any, else `val_per_class` per class but at most `val_fraction` of what test left. train:
    `shots_per_class` of what remains. Each draw uses its own generator seeded by (seed,
    purpose, label), so raising shots_per_class only adds images, and test/val never depend on
    shots_per_class or on the other classes."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, cand in enumerate(candidates):
        by_label[cand.label].append(i)
    fixed = [c.split for c in candidates]
    has_test, has_val = "test" in fixed, "val" in fixed
    out: list[str | None] = [None] * len(candidates)

    test_pool, free = {}, {}
    for label, idx in sorted(by_label.items()):
        unfixed = [i for i in idx if fixed[i] is None]
        if has_test:
            test_pool[label] = [i for i in idx if fixed[i] == "test"]
            free[label] = unfixed
        else:
            shuffled = _shuffle(unfixed, p.seed, "test", label)
            k = _test_count(len(unfixed), p.test_fraction)
            test_pool[label], free[label] = sorted(shuffled[:k]), sorted(shuffled[k:])
    for i in _cap(test_pool, p.test_size, p.seed):
        out[i] = "test"

    for label, idx in sorted(by_label.items()):
        if has_val:
            val = [i for i in idx if fixed[i] == "val"]
            rest = free[label]
        else:
            shuffled = _shuffle(free[label], p.seed, "val", label)
            k = min(p.val_per_class, _test_count(len(shuffled), p.val_fraction))
            val, rest = shuffled[:k], shuffled[k:]
        train = _shuffle(sorted(rest + [i for i in idx if fixed[i] == "train"]),
                         p.seed, "train", label)
        if p.shots_per_class is not None:
            train = train[: p.shots_per_class]
        for i in val:
            out[i] = "val"
        for i in train:
            out[i] = "train"
    return out


_PURPOSES = {"test": 1, "val": 2, "train": 3, "cap": 4}


def _shuffle(items: Sequence[int], seed: int, purpose: str, label: str) -> list[int]:
    rng = np.random.default_rng([seed, _PURPOSES[purpose], zlib.crc32(label.encode())])
    return [items[j] for j in rng.permutation(len(items))]


def _test_count(n: int, fraction: float) -> int:
    """Images of a class held out (for test, or val): at least one, never the whole class."""
    if n < 2 or fraction <= 0:
        return 0
    return min(max(1, round(n * fraction)), n - 1)


def _cap(pool: dict[str, list[int]], cap: int | None, seed: int) -> list[int]:
    """A stratified subsample of at most `cap` items: quotas by largest remainder."""
    total = sum(len(v) for v in pool.values())
    if cap is None or total <= cap:
        return [i for v in pool.values() for i in v]
    exact = {label: cap * len(v) / total for label, v in pool.items()}
    quota = {label: int(x) for label, x in exact.items()}
    by_remainder = sorted(pool, key=lambda label: (quota[label] - exact[label], label))
    for label in by_remainder[: cap - sum(quota.values())]:
        quota[label] += 1
    return [i for label, v in sorted(pool.items())
            for i in _shuffle(v, seed, "cap", label)[: quota[label]]]


def write_prepared(layout: Layout, chosen: list[tuple[Candidate, str]]) -> pd.DataFrame:
    """Build the new data/prepared beside the old one, then swap it in by renames."""
    final = layout.prepared
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final)  # pid-tagged: the next run cleans it if this one is killed
    try:
        used: set[str] = set()
        rows = [_write_one(tmp, cand, split, used) for cand, split in chosen]
        manifest = pd.DataFrame(rows, columns=list(COLUMNS))
        write_manifest(tmp / layout.manifest.relative_to(final), manifest)
        # the user's own path of each copy, for messages and the quarantine list
        write_csv(tmp / layout.origins.relative_to(final), ["path", "origin"],
                  [[row[0], shown(cand.file) if cand.file is not None else cand.origin]
                   for row, (cand, _) in zip(rows, chosen, strict=True)])
        _swap_in(tmp, final)
    except OSError as exc:  # a full disk: the previous data/prepared is still whole
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(final, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_one(root: Path, cand: Candidate, split: str, used: set[str]) -> list:
    rel = _unique_name(cand, used)
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if cand.file is not None:
        shutil.copyfile(cand.file, dst)  # the user's bytes, unchanged
        sha = sha256_file(dst)
        if sha != cand.key:
            raise IngestError(f"{cand.file}: changed while ingest was reading it; run again")
    else:
        Image.fromarray(cand.pixels).save(dst, format="PNG")  # uint8 (H, W): mode L
        sha = sha256_file(dst)
    try:
        width, height, mode = probe(dst)
    except ImageError:
        width, height, mode = "", "", "unreadable"  # validate reports it with the reason
    origin = str(cand.file) if cand.file is not None else cand.origin
    return [rel, cand.label, split, sha, width, height, mode, origin]


def _unique_name(cand: Candidate, used: set[str]) -> str:
    """images/<label>/<name>, with a content-hash suffix when two files share a name; an
    unlabelled image keeps its folders under unlabeled/."""
    if cand.split == UNLABELED:
        name = Path(cand.name)
        folder = (Path(UNLABELED) / name.parent).as_posix()
    else:
        folder = cand.label.replace("/", "_").replace("\\", "_").replace("\0", "_")
        if folder in ("", ".", ".."):
            folder = f"_{folder}"
        if len(folder.encode()) > MAX_STEM_BYTES:  # a label may be longer than a name can be
            digest = hashlib.sha256(cand.label.encode()).hexdigest()[:12]
            folder = f"{folder.encode()[:MAX_STEM_BYTES].decode(errors='ignore')}_{digest}"
        folder, name = f"images/{folder}", Path(cand.name)
    stem = name.stem.encode()[:MAX_STEM_BYTES].decode(errors="ignore")
    rel = f"{folder}/{stem}{name.suffix}"
    if rel.casefold() in used:  # casefold: also safe on case-insensitive file systems
        rel = f"{folder}/{stem}_{cand.key[:12]}{name.suffix}"
    used.add(rel.casefold())
    return rel


def _swap_in(new: Path, final: Path) -> None:
    """Replace `final` by `new`; until the last rename the previous folder stays whole."""
    old = None
    if final.exists() or final.is_symlink():
        old = temp_dir(final)
        os.rename(final, old / final.name)
    os.rename(new, final)
    if old is not None:
        shutil.rmtree(old)
