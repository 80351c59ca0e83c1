"""`graft bundle`: the exported models packed for a device, as a folder and a .zip.

Written only to a new path or over a bundle of its own (a `.graft-bundle` marker lists what it
made), never into the project's outputs, and nothing it did not make is ever deleted. The
bundle holds the .onnx set of one export (the champion's, chosen by graft.lifecycle.ship),
`labels.json` (class names in output order), a standalone `predict.py` that needs only numpy,
Pillow and onnxruntime (the template in graft/deploy/bundle_template, which reproduces
graft.data.images), and a README saying how to run it.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

from graft.core.files import atomic_output, clean_temp, sha256_file, temp_dir
from graft.core.layout import Layout
from graft.deploy.publish import check_set, default_file, set_files

TEMPLATE = "bundle_template"
MARKER = ".graft-bundle"  # in a bundle folder: the files the bundle made (JSON)
ZIP_COMMENT = b"graft-bundle"  # a bundle's .zip says so in its comment


class BundleError(ValueError):
    """Nothing to bundle, or a model that is not Graft's; the message names the file."""


def template_text(name: str = "predict.py") -> str:
    """The text of a file from graft/deploy/bundle_template (shipped as package data)."""
    return resources.files("graft.deploy").joinpath(TEMPLATE, name).read_text(encoding="utf-8")


def build_bundle(layout: Layout, source: Path, out: Path | None = None,
                 expected: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the bundle folder `out` (default ROOT/bundle) and `out`.zip from the ONNX set in
    `source` (the champion's folder); replaces only an earlier bundle of Graft's own.

    expected: {file name: sha256} the copies must have (the registry's record), checked on the
    copies themselves before anything is published. Returns {'folder', 'zip', 'files': {name:
    {'bytes', 'sha256'}}}."""
    out = Path(out) if out is not None else layout.bundle
    zip_path = out.parent / f"{out.name}.zip"  # not with_suffix: dist/v1.2 → dist/v1.2.zip
    check_destination(layout, out, zip_path)
    models = set_files(source)
    if not models or models[0].name != layout.onnx.name:
        raise BundleError(f"{source / layout.onnx.name}: not found; nothing to bundle")
    reference = check_set(models)[models[0]]  # refuses a file that is not Graft's, a mixed set

    clean_temp(out.parent, name=out.name)  # staging folders of a killed earlier bundle
    staging = temp_dir(out)
    try:
        for path in models:
            shutil.copyfile(path, staging / path.name)
        _check_copies(staging, expected or {}, source)
        (staging / "labels.json").write_text(
            json.dumps(reference["class_names"], indent=2) + "\n", encoding="utf-8")
        (staging / "predict.py").write_text(template_text(), encoding="utf-8")
        (staging / "README.md").write_text(
            readme(reference, [p.name for p in models], default_file(models).name),
            encoding="utf-8")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(staging.iterdir())}
        (staging / MARKER).write_text(json.dumps({"graft_bundle": 1, "files": sorted(files)}),
                                      encoding="utf-8")
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.comment = ZIP_COMMENT
        for name in files:
            zf.write(out / name, f"{out.name}/{name}")
    zip_path.chmod(0o644)  # made private (0600); meant to be copied to other machines
    return {"folder": str(out), "zip": str(zip_path), "files": files}


def check_destination(layout: Layout, out: Path, zip_path: Path) -> None:
    """A bundle writes only to new paths or over a bundle of its own (its marker lists every
    file it holds), never into what Graft's stages write; BundleError naming the path."""
    inside = layout.output_containing(out)
    if inside is not None and out.resolve() != layout.bundle.resolve():
        raise BundleError(f"{out}: inside {inside}, which Graft's stages write; choose an --out "
                          "outside it")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{out}: exists and is not a bundle folder; refusing to replace it "
                          "(choose a new --out)")
    if out.exists():
        made = _marker_files(out)
        if made is None:
            raise BundleError(f"{out}: exists and is not a Graft bundle (no {MARKER}); "
                              "refusing to replace it (choose a new --out)")
        extra = sorted({p.name for p in out.iterdir()} - set(made) - {MARKER})
        if extra:
            raise BundleError(f"{out}: holds files the bundle did not make ({', '.join(extra)}"
                              "); refusing to replace it (move them, or choose a new --out)")
    if zip_path.is_symlink() or (zip_path.exists() and not _is_bundle_zip(zip_path)):
        raise BundleError(f"{zip_path}: exists and is not a Graft bundle zip; refusing to "
                          "overwrite it (choose a new --out)")


def _marker_files(folder: Path) -> list[str] | None:
    """The files a bundle folder's marker says the bundle made, or None: not a bundle."""
    try:
        made = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(name) for name in made] if isinstance(made, list) else None


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.comment == ZIP_COMMENT
    except (OSError, zipfile.BadZipFile):
        return False


def _check_copies(staging: Path, expected: dict[str, str], source: Path) -> None:
    for name, sha in expected.items():
        copy = staging / name
        if copy.exists() and sha256_file(copy) != sha:
            raise BundleError(f"{source / name}: its sha256 is not the one the registry "
                              "recorded (changed while bundling, or since the promotion); "
                              "refused")


def readme(meta: dict[str, Any], model_files: list[str], default: str) -> str:
    """The bundle's README: what is inside, and the two commands a device needs."""
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
    """Move `staging` onto `out`; an older bundle at `out` (checked to be Graft's) is moved
    into a fresh folder of its own first and removed from there."""
    aside = None
    if out.exists():
        aside = temp_dir(out)
        os.replace(out, aside / out.name)
    os.replace(staging, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
