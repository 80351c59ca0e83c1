"""`graft predict PATH... [--model MODEL.onnx]`: classify image files with an exported model
(by default the champion's, chosen by graft.lifecycle.ship).

Needs only the .onnx file (class names and preprocessing travel in its metadata); a file of an
export's set (model.onnx, model.int8.onnx, model.fp16.onnx) is used only if its set is whole. A
file that cannot be decoded is reported and skipped, and the exit code says that something was
skipped.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from graft.core.layout import ONNX_FILES
from graft.data.images import IMAGE_SUFFIXES
from graft.deploy.onnx_model import OnnxClassifier
from graft.deploy.publish import check_set, set_files

Format = Literal["table", "csv", "json"]
FORMATS = ("table", "csv", "json")


class PredictError(ValueError):
    """Input that stops the whole run (a missing path, a bad option); names the culprit."""


def collect_inputs(paths: Sequence[Path | str]) -> list[Path]:
    """Files as given, plus the image files (by suffix) inside folders, recursively and sorted.

    A file named explicitly is kept whatever its suffix, so a non-image is reported, not ignored.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        elif path.exists():  # a FIFO or a device: reading it could block forever
            raise PredictError(f"{path}: not a regular file or folder")
        else:
            raise PredictError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))  # a file named twice is predicted once, first place kept


def predict(
    model_path: Path | str, paths: Sequence[Path | str], top_k: int = 3, batch_size: int = 32
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(rows, failures): rows {'path', 'top_k': [(label, prob), ...]}; failures (path, problem)."""
    if top_k < 1:
        raise PredictError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise PredictError(f"--batch-size must be at least 1, got {batch_size}")
    files = collect_inputs(paths)
    if not files:
        raise PredictError(f"no image files in {', '.join(str(p) for p in paths)}")
    model_path = Path(model_path)
    if model_path.name in ONNX_FILES.values():  # one of an export's set: never a mixed one
        check_set(set_files(model_path.parent))
    model = OnnxClassifier(model_path)
    return model.predict_files(files, batch_size=batch_size, top_k=top_k)


def format_rows(rows: Sequence[dict[str, Any]], fmt: Format = "table") -> str:
    """Rows as an aligned text table, CSV (path, label_1, prob_1, ...) or a JSON list."""
    if fmt == "json":
        return json.dumps([{"path": r["path"],
                            "top_k": [{"label": label, "prob": round(p, 6)}
                                      for label, p in r["top_k"]]} for r in rows], indent=2)
    k = max((len(r["top_k"]) for r in rows), default=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["path", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "prob")]])
        for r in rows:
            cells = [v for label, p in r["top_k"] for v in (label, f"{p:.6f}")]
            writer.writerow([r["path"], *cells])
        return out.getvalue().rstrip("\n")
    if fmt == "table":
        header = ["path", *[f"top-{i}" for i in range(1, k + 1)]]
        body = [[r["path"], *[f"{label} ({p:.3f})" for label, p in r["top_k"]]] for r in rows]
        widths = [max(len(line[i]) for line in [header, *body] if i < len(line))
                  for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False))
                         .rstrip() for line in [header, *body])
    raise PredictError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def main(
    model: Path | str, paths: Sequence[Path | str], top_k: int = 3, fmt: Format = "table",
    batch_size: int = 32,
) -> int:
    """What the CLI runs: predictions on stdout, one line per skipped file on stderr.

    Returns 0, or 1 when any file was skipped. Errors that stop the whole run (missing path,
    not a Graft model, bad option) raise ValueError for the CLI to report.
    """
    if fmt not in FORMATS:
        raise PredictError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    rows, failures = predict(model, paths, top_k=top_k, batch_size=batch_size)
    if rows:
        print(format_rows(rows, fmt))
    for path, problem in failures:
        print(f"skipped {path}: {problem}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(rows) + len(failures)} file(s) skipped", file=sys.stderr)
    return 1 if failures else 0
