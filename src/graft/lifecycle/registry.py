"""The model registry on disk: models/champion/ is what ships; models/history/ holds the rest.

A version is a folder (`build_version` names its files; `Version` reads them): model.pt, the ONNX
file(s), params.yaml, metrics/*.json, the manifest it was trained on (manifest.csv), copies of its
test images (testset/, so it can be scored again after data/prepared has moved on) and
champion.json (version, date, accuracy, every file's sha256), written last (`seal`): a folder
without champion.json is an unfinished build. `verify` checks every recorded hash before a
version is restored, promoted, bundled or scored: a replaced file is refused by name.

The champion is never written in place. A promotion (or a rollback) is three renames:

1. write models/.promoting (which folder comes in, where the old champion goes), atomically;
2. rename models/champion → models/history/<its version>;
3. rename the incoming folder → models/champion; delete .promoting.

A crash at any point leaves a loadable champion: before 2 it is the old champion; between 2 and
3 `champion_dir` follows .promoting to the incoming folder, which is complete; `recover` (run
under the lock before every change) finishes an interrupted promotion and deletes unfinished
builds. Changes hold models/.lock (an flock), so two retrain runs never race.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graft.core.files import sha256_file, write_json
from graft.data.manifest import read_manifest

CHAMPION = "champion"
HISTORY = "history"
INFO = "champion.json"  # written last: its presence marks a complete version folder
INTENT = ".promoting"
LOCK = ".lock"
STAGING_PREFIX = ".champion.tmp-"
VERSION_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9_.-]{1,64}")
# what .promoting may name: a staged folder or a history entry, nothing else
RETIRED = re.compile(rf"{HISTORY}/{VERSION_NAME.pattern}")
INCOMING = re.compile(rf"{re.escape(STAGING_PREFIX)}[A-Za-z0-9_]+|{RETIRED.pattern}")
# inside a version folder
MODEL, PARAMS, MANIFEST, METRICS, TESTSET = "model.pt", "params.yaml", "manifest.csv", "metrics", \
    "testset"


class RegistryError(ValueError):
    """A registry request that cannot be met; the message names the folder and the reason."""


class RegistryBusy(RegistryError):
    """Another process holds models/.lock (a retrain, a rollback)."""


@dataclass(frozen=True)
class Version:
    """One complete version folder (the champion's, or a history entry's) and its files."""

    folder: Path

    @property
    def model(self) -> Path:
        return self.folder / MODEL

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    @property
    def info(self) -> dict[str, Any]:
        return read_info(self.folder)

    def test_image(self, sha256: str, path: str) -> Path:
        """The copy of the test image with content `sha256` (manifest path `path`)."""
        return self.folder / TESTSET / f"{sha256}{Path(path).suffix}"


def champion(models: Path) -> Version | None:
    """The current champion, or None if there is none yet (read-only)."""
    folder = champion_dir(models)
    return None if folder is None else Version(folder)


def build_version(models: Path, model: Path, params: Path, manifest: Path,
                  others: list[Path], metrics: list[Path],
                  info: dict[str, Any] | None = None) -> Path:
    """Stage a version folder (not yet the champion; see `promote`; sealed when `info` is
    given): the checkpoint,
    the params and the manifest it was trained with, `others` (the ONNX files) as they are,
    `metrics` under metrics/, and a copy of every test image of the manifest under testset/, so
    the version can be scored again after data/prepared has moved on."""
    df = read_manifest(manifest)
    test = df[df["split"] == "test"]
    files = {MODEL: model, PARAMS: params, MANIFEST: manifest}
    files |= {p.name: p for p in others}
    files |= {f"{METRICS}/{p.name}": p for p in metrics}
    files |= {f"{TESTSET}/{sha}{Path(rel).suffix}": manifest.parent / rel
              for sha, rel in zip(test["sha256"], test["path"], strict=True)}
    return stage(models, files, info)


def version_id(model_path: Path, when: datetime | None = None) -> str:
    """`<UTC time>-<first 8 hex of the model's sha256>`: sorts by time, names the weights."""
    when = when or datetime.now(UTC)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{sha256_file(model_path)[:8]}"


@contextlib.contextmanager
def lock(models: Path, timeout: float = 0.0) -> Iterator[None]:
    """Hold models/.lock; wait up to `timeout` s, then raise RegistryBusy naming the holder."""
    models.mkdir(parents=True, exist_ok=True)
    path = models / LOCK
    with open(path, "a+", encoding="utf-8") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown process"
                    raise RegistryBusy(
                        f"{path}: held by {holder}; another retrain or rollback is running. "
                        "Try again when it ends (or raise retrain.lock_timeout to wait)."
                    ) from None
                time.sleep(0.2)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_info(folder: Path) -> dict[str, Any]:
    path = folder / INFO
    if not path.exists():
        raise RegistryError(f"{folder}: not a complete model version ({INFO} is missing)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RegistryError(f"{path}: not readable JSON ({exc})") from None
    # the version names a folder under history/: never a path that leaves it
    if not isinstance(info, dict) or not VERSION_NAME.fullmatch(str(info.get("version"))):
        raise RegistryError(f"{path}: no valid version name (expected <UTC time>-<hash>)")
    return info


def _intent(models: Path) -> dict[str, str] | None:
    path = models / INTENT
    if not path.exists():
        return None
    try:
        intent = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RegistryError(f"{path}: not readable JSON ({exc})") from None
    # the renames it asks for must stay inside the registry: never a user's folder
    incoming, retired = intent.get("incoming"), intent.get("retired")
    if not (INCOMING.fullmatch(str(incoming)) and (
            retired is None or RETIRED.fullmatch(str(retired)))):
        raise RegistryError(f"{path}: names folders outside the registry ({incoming!r}, "
                            f"{retired!r}); refused: delete it by hand after checking")
    return intent


def champion_dir(models: Path) -> Path | None:
    """The folder that holds the current champion, or None if there is none yet (read-only)."""
    if (models / CHAMPION / INFO).exists():
        return models / CHAMPION
    intent = _intent(models)  # crashed between renames 2 and 3: the incoming folder is complete
    if intent and (models / intent["incoming"] / INFO).exists():
        return models / intent["incoming"]
    return None


def stage(models: Path, files: Mapping[str, Path], info: dict[str, Any] | None = None) -> Path:
    """Build a version folder `models/.champion.tmp-*` (not yet the champion), sealed with
    `info` when given (else the caller seals it once it has scored the copies).

    files: name in the folder (may contain '/') → source file. champion.json goes in last, so a
    crash mid-copy leaves a folder `recover` deletes."""
    models.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=models))
    for name, src in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, folder / name)
    if info is not None:
        seal(folder, info)
    return folder


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a version folder (but champion.json), by relative name."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != INFO}


def seal(folder: Path, info: dict[str, Any], expected: Mapping[str, str] | None = None) -> None:
    """Write champion.json (last: it marks the folder complete) with every file's sha256.

    expected: the hashes taken when the copies were staged; a file that changed since (or one
    added or removed) stops the seal, so what is promoted is exactly what was scored."""
    found = hashes(folder)
    if expected is not None and found != dict(expected):
        changed = sorted(set(found.items()) ^ set(expected.items()))
        raise RegistryError(f"{folder / changed[0][0]}: changed after it was scored; refused")
    record = {**info, "files": found}
    if MODEL in found:
        record["model_sha256"] = found[MODEL]
    write_json(folder / INFO, record)


def verify(folder: Path) -> dict[str, Any]:
    """champion.json of a complete version folder, after checking that every file it records
    still has its recorded sha256; RegistryError naming the first file that does not."""
    info = read_info(folder)
    recorded = info.get("files")
    if not isinstance(recorded, dict):  # sealed before per-file hashes: the model's alone
        recorded = {MODEL: info.get("model_sha256")}
    for name, sha in recorded.items():
        path = folder / name
        if not _inside(path, folder) or not path.is_file():
            raise RegistryError(f"{path}: recorded in {folder / INFO} but missing; refused")
        if sha256_file(path) != sha:
            raise RegistryError(f"{path}: sha256 differs from the one {INFO} records (the file "
                                "was replaced or damaged after promotion); refused")
    return info


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def promote(models: Path, incoming: Path) -> str:
    """Make `incoming` (a staged folder or a history entry) the champion; returns its version.

    The caller holds `lock(models)`. The old champion moves to history/<its version>. Every
    file's recorded sha256 is checked first: a replaced or damaged file is never restored."""
    version = verify(incoming)["version"]
    old = models / CHAMPION
    retired = None
    if old.exists():
        retired = f"{HISTORY}/{read_info(old)['version']}"
        if (models / retired).exists():
            raise RegistryError(f"{models / retired}: already exists; refusing to overwrite it")
    (models / HISTORY).mkdir(parents=True, exist_ok=True)
    write_json(models / INTENT, {"incoming": str(incoming.relative_to(models)), "retired": retired})
    _finish(models)
    return version


def _finish(models: Path) -> None:
    """Carry out the renames .promoting describes, skipping those already done; then delete it."""
    intent = _intent(models)
    if intent is None:
        return
    incoming = models / intent["incoming"]
    if incoming.exists():
        if intent["retired"] and (models / CHAMPION).exists():
            _rename(models / CHAMPION, models / intent["retired"])
        _rename(incoming, models / CHAMPION)
    (models / INTENT).unlink()


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)  # one place for the renames: atomic on one file system


def recover(models: Path) -> list[str]:
    """Finish an interrupted promotion and delete unfinished builds; returns what it did.

    The caller holds `lock(models)`."""
    done = []
    if _intent(models) is not None:
        done.append(f"finished the interrupted promotion of {_intent(models)['incoming']}")
        _finish(models)
    for leftover in sorted(models.glob(STAGING_PREFIX + "*")):
        shutil.rmtree(leftover)
        done.append(f"deleted the unfinished build {leftover.name}")
    return done


def versions(models: Path) -> list[dict[str, Any]]:
    """Every complete version, newest first: champion.json fields plus `status` and `path`."""
    rows = []
    current = champion_dir(models)
    if current is not None:
        rows.append({**read_info(current), "status": "champion", "path": str(current)})
    history = models / HISTORY
    if history.is_dir():
        for folder in sorted(history.iterdir(), reverse=True):
            if (folder / INFO).exists():
                rows.append({**read_info(folder), "status": "history", "path": str(folder)})
    return rows


def rollback(models: Path, version: str | None = None, timeout: float = 0.0) -> str:
    """Make history entry `version` (default: the newest) the champion; returns its version."""
    with lock(models, timeout):
        recover(models)
        history = [r for r in versions(models) if r["status"] == "history"]
        if not history:
            raise RegistryError(f"{models / HISTORY}: no earlier version to roll back to")
        if version is None:
            return promote(models, Path(history[0]["path"]))
        for row in history:
            if row["version"] == version or row["version"].startswith(version):
                return promote(models, Path(row["path"]))
        known = ", ".join(r["version"] for r in history)
        raise RegistryError(f"{models / HISTORY}: no version {version!r}; known: {known}")
