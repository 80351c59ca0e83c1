"""The export's ONNX files (fp32, int8, fp16) as one set: published together, used together.

Three files cannot be swapped in by one rename, and dvc.yaml names each of them in models/. So
every file of one export carries the same `graft.export_id` and `graft.source_sha256` (the
checkpoint it came from), `publish_set` renames the variants first and model.onnx last, and
`check_set` — what bundle, predict, bench and a promotion call before using the files — refuses
any set whose files disagree: a kill between two renames leaves a set that is never used, only
replaced by the next export.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.core.layout import ONNX_FILES
from graft.deploy.onnx_model import read_metadata

# metadata every file of one set shares: which export wrote it, and from which checkpoint
SET_KEYS = ("export_id", "source_sha256", "class_names")


class MixedSetError(ValueError):
    """ONNX files beside each other that did not come from one export; names the file."""


def set_files(folder: Path) -> list[Path]:
    """The set's files present in `folder`, model.onnx first (absent: an empty list)."""
    return [folder / name for name in ONNX_FILES.values() if (folder / name).is_file()]


def default_file(files: Sequence[Path]) -> Path:
    """The file of a set a device runs unless told otherwise: int8 when the set has it (about
    twice fp32's speed on CPUs, within its accuracy gate), else model.onnx."""
    by_name = {p.name: p for p in files}
    return by_name.get(ONNX_FILES["int8"]) or by_name[ONNX_FILES["fp32"]]


def publish_set(files: dict[str, Path], stale: Sequence[Path], folder: Path) -> dict[str, Path]:
    """Move the finished files {precision: temporary path} into `folder` under their set names,
    model.onnx last, then delete `stale` (variants of an older set this export did not write);
    returns {precision: published path}."""
    published = {name: folder / ONNX_FILES[name] for name in files}
    for name in sorted(files, key=lambda n: n == "fp32"):  # variants first, model.onnx last
        os.replace(files[name], published[name])
    for path in stale:  # until this, a kill leaves them, and check_set refuses the mixed set
        path.unlink(missing_ok=True)
    return published


def check_set(paths: Sequence[Path], source_sha256: str | None = None
              ) -> dict[Path, dict[str, Any]]:
    """Each file's metadata, after checking that all come from one export (and, when given,
    from the checkpoint with `source_sha256`); MixedSetError naming the odd file otherwise."""
    if not paths:
        return {}
    metas = {p: read_metadata(p) for p in paths}
    first, reference = paths[0], metas[paths[0]]
    for path, meta in metas.items():
        differs = [key for key in SET_KEYS if meta.get(key) != reference.get(key)]
        if differs:
            raise MixedSetError(
                f"{path}: not from the same export as {first} (graft.{differs[0]} differs: a "
                "run killed while publishing, or a file copied in by hand); refused: run the "
                "export stage again")
    if source_sha256 is not None and reference.get("source_sha256") != source_sha256:
        raise MixedSetError(
            f"{first}: exported from another checkpoint (graft.source_sha256 "
            f"{str(reference.get('source_sha256'))[:12]}…, the checkpoint beside it is "
            f"{source_sha256[:12]}…); refused: run the export stage again")
    return metas
