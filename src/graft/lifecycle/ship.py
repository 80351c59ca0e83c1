"""What ships: the registry's champion (models/champion/), never the workspace's last export.

`graft bundle` and `graft predict` read the champion's files only after `registry.verify` has
checked every recorded sha256 and `check_set` that its ONNX files are one export of its own
checkpoint. With no champion yet they say the one command to run: `graft promote` gates the
exported workspace model and makes it the first champion (the retrain loop promotes later ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graft.core.layout import Layout
from graft.deploy.bundle import build_bundle
from graft.deploy.publish import check_set, default_file, set_files
from graft.lifecycle import registry


class NoChampionError(registry.RegistryError):
    """Nothing has been promoted yet; the message says what to run."""


def champion_files(models: Path) -> tuple[list[Path], dict[str, str]]:
    """The champion's ONNX set (model.onnx first) and its recorded hashes, checked."""
    current = registry.champion(models)
    if current is None:
        raise NoChampionError(
            f"{models / registry.CHAMPION}: no champion yet; run `graft promote` to gate the "
            "exported model and make it the champion (after `dvc repro`)")
    info = registry.verify(current.folder)
    recorded = info.get("files") or {}
    files = set_files(current.folder)
    check_set(files, recorded.get(registry.MODEL, info.get("model_sha256")))
    return files, recorded


def champion_onnx(models: Path) -> Path:
    """The champion's model a device runs by default (int8 when there is one, else fp32)."""
    files, _ = champion_files(models)
    return default_file(files)


def bundle_champion(layout: Layout, out: Path | None = None) -> dict[str, Any]:
    """`graft bundle`: the champion's ONNX set, copies checked against the recorded hashes."""
    files, recorded = champion_files(layout.models)
    expected = {p.name: recorded[p.name] for p in files if p.name in recorded}
    return build_bundle(layout, files[0].parent, out, expected)
