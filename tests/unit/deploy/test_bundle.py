"""`graft bundle` and its standalone predict.py: same decoding as graft.data.images, same answers
as `graft predict`, in a venv holding only numpy, Pillow and onnxruntime."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import graft.deploy
from graft.core.layout import Layout
from graft.data.images import ImageError, Preprocessing, read_image
from graft.deploy.bundle import MARKER, BundleError, build_bundle
from graft.deploy.predict import predict
from tests.fixtures import CLASSES, odd_decoding_images


def _load_template(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bundle_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_template_decodes_and_preprocesses_exactly_like_graft(tmp_path):
    template = _load_template(Path(graft.deploy.__file__).parent / "bundle_template" / "predict.py")
    pre = Preprocessing(24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for path in odd_decoding_images(tmp_path / "odd"):
        ours = pre.to_array(read_image(path))
        theirs = template.to_array(template.read_image(path), pre.size, list(pre.mean),
                                   list(pre.std))
        assert theirs.dtype == np.float32 and np.array_equal(ours, theirs), path.name
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    for bad in (tmp_path / "empty.png", tmp_path / "notes.jpg"):
        with pytest.raises(ImageError) as ours:
            read_image(bad)
        with pytest.raises(template.ImageError) as theirs:
            template.read_image(bad)
        assert theirs.value.problem == ours.value.problem
    assert template.RESIZE_POLICY == Preprocessing.resize


def _bundle(layout: Layout, tmp_path: Path) -> Path:
    result = build_bundle(layout, layout.models, tmp_path / "dist" / "bundle")
    return Path(result["folder"])


def test_bundle_folder_and_zip(exported, tmp_path):
    layout, _ = exported
    result = build_bundle(layout, layout.models, tmp_path / "dist" / "bundle")
    folder = Path(result["folder"])
    expected = {"model.onnx", "model.int8.onnx", "model.fp16.onnx", "labels.json", "predict.py",
                "README.md"}
    assert {p.name for p in folder.iterdir()} - {MARKER} == expected == set(result["files"])
    assert json.loads((folder / "labels.json").read_text()) == CLASSES
    assert (folder / "model.onnx").read_bytes() == layout.onnx.read_bytes()
    assert "python predict.py" in (folder / "README.md").read_text()
    with zipfile.ZipFile(result["zip"]) as zf:
        assert {Path(n).name for n in zf.namelist()} == expected
        assert zf.read("bundle/labels.json") == (folder / "labels.json").read_bytes()
    build_bundle(layout, layout.models, folder)  # a second build replaces its own first one
    assert not list(folder.parent.glob(".*"))


def test_bundle_without_export_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match=r"model\.onnx: not found; nothing to bundle"):
        build_bundle(Layout(tmp_path), Layout(tmp_path).models)


def _bundled_top1(python: str | Path, folder: Path, images: Path, model: str) -> dict[str, str]:
    out = subprocess.run([str(python), str(folder / "predict.py"), str(images), "--model",
                          str(folder / model), "--format", "json"],
                         capture_output=True, text=True, check=True, cwd=folder)
    return {Path(r["path"]).name: r["top_k"][0]["label"] for r in json.loads(out.stdout)}


def _graft_top1(model: Path, images: Path) -> dict[str, str]:
    rows, failures = predict(model, [images], top_k=1)
    assert not failures
    return {Path(r["path"]).name: r["top_k"][0][0] for r in rows}


@pytest.mark.parametrize("model", ["model.onnx", "model.int8.onnx"])
def test_bundled_predict_matches_graft_predict(exported, tmp_path, model):
    layout, _ = exported
    folder = _bundle(layout, tmp_path)
    images = layout.prepared / "test"
    got = _bundled_top1(sys.executable, folder, images, model)
    assert got == _graft_top1(layout.models / model, images) and len(got) == 6


def test_bundled_predict_reports_bad_files(exported, tmp_path):
    layout, _ = exported
    folder = _bundle(layout, tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    proc = subprocess.run([sys.executable, str(folder / "predict.py"), str(tmp_path / "bad.png"),
                           str(layout.prepared / "test" / "circle")],
                          capture_output=True, text=True, cwd=folder)
    assert proc.returncode == 1
    assert "skipped" in proc.stderr and "bad.png" in proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split()[:2] == ["path", "top-1"]  # a table with a header, as graft predict's
    assert len(rows) == 2  # the two circles were still classified


def test_bundle_runs_in_a_clean_venv_with_three_packages(exported, tmp_path):
    # 10–60 s: most of it pip fetching the three packages from the registry
    layout, _ = exported
    folder = _bundle(layout, tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "numpy", "pillow", "onnxruntime"], check=True)
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format",
                             "json"], capture_output=True, text=True, check=True).stdout
    assert "graft" not in {p["name"] for p in json.loads(freeze)}
    assert "torch" not in {p["name"] for p in json.loads(freeze)}
    images = layout.prepared / "test"
    for model in ("model.onnx", "model.int8.onnx"):
        got = _bundled_top1(venv / "bin" / "python", folder, images, model)
        assert got == _graft_top1(layout.models / model, images)
