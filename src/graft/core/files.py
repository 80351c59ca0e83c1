"""Atomic output files, content hashes, and the temporary files both leave behind when a run is
killed: a crash never leaves a half-written output, and the next run clears what it left.

Every temporary entry Graft makes beside an output is named `.<name>.<pid>-<random>.tmp`
(`temp_name`), so `clean_temp` can tell a dead run's leftovers (its pid is gone) from the live
work of a run going on at the same time, and never touches a file it did not make.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# .<name>.<pid>-<random>.tmp; the pid says whether its writer still runs
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]+\.tmp$")
# what Graft before these names left behind in its own output folders (no pid: always stale)
# (mkstemp's 8 characters after a name with one of the suffixes Graft writes)
_LEGACY = re.compile(r"^\.(.+\.(pt|onnx|json|csv|npz|png|md|zip|yaml)\.[a-z0-9_]{8}\.tmp"
                     r"|export-.+|prepared\.(new|old)-.+)$")
# OS errors a user fixes outside Graft (space, permissions, a read-only disk)
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()  # outputs are readable by whom the user's umask allows


class OutputError(ValueError):
    """An output Graft could not write (disk full, read-only, no permission); names the file."""


def temp_name(name: str) -> str:
    """`.<name>.<pid>-<random>.tmp`: hidden, and `clean_temp` knows whose it is."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


def temp_dir(beside: Path) -> Path:
    """A new empty folder named by `temp_name` beside `beside` (same file system: renames)."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    folder = beside.parent / temp_name(beside.name)
    folder.mkdir()
    return folder


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same folder so the final rename is atomic on POSIX. A full
    disk, a read-only folder or a missing permission becomes an OutputError naming `path`.
    """
    path = Path(path)
    tmp = path.parent / temp_name(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch(mode=0o600)
        yield tmp
        os.chmod(tmp, _NEW_FILE_MODE)  # what open() would have made: 0644 under umask 022
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def output_error(path: Path | str, exc: OSError) -> Exception:
    """OutputError '<path>: cannot write (<reason>)' for the errors a user fixes, else `exc`."""
    if exc.errno not in _USER_ERRNOS:
        return exc
    hint = " (free disk space, then run again)" if exc.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return OutputError(f"{path}: cannot write ({exc.strerror or os.strerror(exc.errno)}){hint}")


def clean_temp(*folders: Path, name: str | None = None) -> list[Path]:
    """Delete the temporary entries of dead runs in `folders` (not recursive); returns them.

    name: only those made for that output name (a folder Graft does not own, such as the one a
    bundle is written into). Otherwise Graft's own output folders: the pid-tagged entries of
    dead processes, and the temporary names older Graft versions used."""
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not there yet, or unreadable: nothing of ours to clean
            continue
        for entry in entries:
            if _is_stale(entry.name, name):
                target = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
                removed.append(target)
    return removed


def _is_stale(entry: str, name: str | None) -> bool:
    match = _TEMP.match(entry)
    if match:
        return (name is None or match["name"] == name) and not _alive(int(match["pid"]))
    return name is None and bool(_LEGACY.match(entry))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def write_text(path: Path | str, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """JSON of a metrics-like object: numpy scalars and arrays, Paths included."""
    return json.dumps(obj, indent=indent, sort_keys=False, default=_jsonable)


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json_text(obj) + "\n")


def write_csv(path: Path | str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shown(path: Path | str) -> str:
    """A path as text that prints and encodes anywhere: bytes that are not UTF-8 (a file name
    from another system) as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, Paths: the things metrics dicts tend to contain."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
