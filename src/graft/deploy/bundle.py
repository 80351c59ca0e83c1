"""`graft bundle`: the exported models packed for a device, as a folder and a .zip.

The bundle holds the .onnx files the export stage published, `labels.json` (class names in output
order), a standalone `predict.py` that needs only numpy, Pillow and onnxruntime (the template in
graft/deploy/bundle_template, which reproduces graft.data.images), and a README saying how to
run it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from graft.core.files import atomic_output, sha256_file
from graft.core.layout import Layout
from graft.deploy.onnx_model import read_metadata

TEMPLATE = "bundle_template"


class BundleError(ValueError):
    """Nothing to bundle, or a model that is not Graft's; the message names the file."""


def template_text(name: str = "predict.py") -> str:
    """The text of a file from graft/deploy/bundle_template (shipped as package data)."""
    return resources.files("graft.deploy").joinpath(TEMPLATE, name).read_text(encoding="utf-8")


def build_bundle(layout: Layout, out: Path | None = None) -> dict[str, Any]:
    """Write the bundle folder `out` (default ROOT/bundle) and `out`.zip; replaces older ones.

    Returns {'folder', 'zip', 'files': {name: {'bytes', 'sha256'}}}.
    """
    out = Path(out) if out is not None else layout.root / "bundle"
    models = [p for p in (layout.onnx, layout.onnx_int8, layout.onnx_fp16) if p.exists()]
    if layout.onnx not in models:
        raise BundleError(f"{layout.onnx}: not found; run the export stage first")
    metas = {p.name: read_metadata(p) for p in models}  # refuses a file that is not Graft's
    reference = metas[layout.onnx.name]
    for name, meta in metas.items():
        if meta["class_names"] != reference["class_names"]:
            raise BundleError(f"{layout.models / name}: class names differ from model.onnx "
                              "(a stale file from another export?)")

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp_dir:
        staging = Path(tmp_dir) / out.name
        staging.mkdir()
        for path in models:
            shutil.copy2(path, staging / path.name)
        (staging / "labels.json").write_text(
            json.dumps(reference["class_names"], indent=2) + "\n", encoding="utf-8")
        (staging / "predict.py").write_text(template_text(), encoding="utf-8")
        (staging / "README.md").write_text(readme(reference, [p.name for p in models]),
                                           encoding="utf-8")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(staging.iterdir())}
        _replace_folder(staging, out)
    zip_path = out.with_suffix(".zip")
    with atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in files:
            zf.write(out / name, f"{out.name}/{name}")
    zip_path.chmod(0o644)  # made by mkstemp (0600); meant to be copied to other machines
    return {"folder": str(out), "zip": str(zip_path), "files": files}


def readme(meta: dict[str, Any], model_files: list[str]) -> str:
    """The bundle's README: what is inside, and the two commands a device needs."""
    default = "model.int8.onnx" if "model.int8.onnx" in model_files else "model.onnx"
    accuracy = meta.get("test_accuracy")
    lines = [
        f"# Graft model bundle: {meta['backbone']}, {len(meta['class_names'])} classes",
        "",
        f"Input {meta['input_size']}×{meta['input_size']} RGB, resize "
        f"`{meta['resize']}`, mean {meta['mean']}, std {meta['std']} (all read from the "
        "models' metadata by predict.py).",
        f"fp32 test accuracy: {float(accuracy):.4f}" if accuracy else "",
        "",
        "Files: " + ", ".join(f"`{f}`" for f in model_files)
        + ", `labels.json` (class names in output order), `predict.py`.",
        "",
        "```",
        "python -m pip install numpy pillow onnxruntime   # onnxruntime-gpu on a CUDA device",
        f"python predict.py photo.jpg folder/ --top-k 3    # uses {default}",
        "python predict.py folder/ --model model.fp16.onnx --format json   # on a GPU",
        "```",
        "",
        "Files that cannot be decoded are reported on stderr and skipped (exit code 1).",
    ]
    return "\n".join(lines) + "\n"


def _replace_folder(staging: Path, out: Path) -> None:
    """Move `staging` onto `out`; an older `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
