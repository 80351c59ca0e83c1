"""Everything the tests build, in one place: tiny image trees (good and bad), tiny projects
(prepared data, manifests, feature stores, checkpoints), registry versions, weights files, and
the one family of tiny params. tests/conftest.py turns the shared ones into pytest fixtures.

Every image written by `write_image` has unique content (ingest drops repeated content), and
the projects are a few 32–64 px images per class, so the tests run in seconds.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from graft.core.config import Params, params_from_dict
from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.data.manifest import read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BACKBONE = "efficientnet_lite0"
SIZE = 32  # pixels: the 1×1 final map still separates colours, and a step takes milliseconds
CLASSES = ["circle", "square", "stripes"]  # sorted, as graft.data.manifest.class_names gives them
# 64 px for exports: onnxruntime's int8 QLinearConv fails on Lite0 at 32 px (2×2 maps, 5×5 kernels)
EXPORT_SIZE = 64
EVALUATE_SPLITS = {"train": 8, "val": 4, "test": 6}  # images per class of the evaluate project
ENSEMBLE_BACKBONES = ["efficientnet_lite0", "efficientnet_lite1"]
TIMM_ARCH = "test_convnext"  # 0.27 M parameters; its timm head is the dotted `head.fc`
TIMM_NAME = f"timm:{TIMM_ARCH}"
FAST = {"epochs": 2, "batch_size": 4, "augment": False}  # a fine-tuning run of a few seconds


# ---- params: one family, every member a `tiny_params` -----------------------------------------


def tiny_params(size: int = SIZE, backbone: str = BACKBONE, **sections: dict[str, Any]) -> Params:
    """Params of a tiny project: features.backbone `backbone` at `size` px, then each keyword a
    params.yaml section's keys (`features={...}` adds to the features section). Loaded with the
    real checks (source "params"): an out-of-range value raises ConfigError here."""
    features = {"backbone": backbone, "image_size": size, **sections.pop("features", {})}
    return params_from_dict({"features": features, **sections})


def finetune_params(**finetune: Any) -> Params:
    """The finetune section's keys on Lite0 at 32 px (the tiny finetune project)."""
    return tiny_params(features={"batch_size": 32}, finetune=finetune)


def ensemble_params(**finetune: Any) -> Params:
    """`ensemble` over Lite0 + Lite1 with linear_probe and prototype members."""
    return tiny_params(finetune={"strategy": "ensemble", "ensemble_backbones": ENSEMBLE_BACKBONES,
                                 "ensemble_strategies": ["linear_probe", "prototype"],
                                 "c_grid": [0.1, 1.0], **finetune})


def views_params(views: int = 2, **finetune: Any) -> Params:
    """`features.views` augmented views per train/val image; a two-value c_grid."""
    return tiny_params(features={"views": views}, finetune={"c_grid": [0.1, 1.0], **finetune})


def auto_params(**features: Any) -> Params:
    """`features.backbone: auto` (every Lite backbone embedded, the top LogME one kept)."""
    return tiny_params(backbone="auto", features={"batch_size": 32, **features},
                       finetune={"strategy": "linear_probe", "c_grid": [1.0]})


def timm_params(**finetune: Any) -> Params:
    """The `timm:test_convnext` backbone (weights from the project's weights/ folder)."""
    return tiny_params(backbone=TIMM_NAME,
                       finetune={"strategy": "linear_probe", "c_grid": [1.0], **finetune})


def evaluate_params(**evaluate: Any) -> Params:
    """A short bootstrap and a few CNN epochs, so a whole evaluate run takes seconds."""
    return tiny_params(evaluate={"bootstrap": 200, "cnn_epochs": 4, "batch_size": 16,
                                 "cnn_batch_size": 8, **evaluate})


def export_params(**export: Any) -> Params:
    """At 64 px, the int8/fp16 gates wide open: 6 test images move accuracy in 17-point steps."""
    return tiny_params(size=EXPORT_SIZE, export={"batch_size": 4, "max_int8_drop": 100.0,
                                                 "max_fp16_drop": 100.0, **export})


def ingest_params(source: str, path: Path | str, ingest: dict[str, Any] | None = None,
                  validate: dict[str, Any] | None = None) -> Params:
    """Params for a tiny image tree: everything to train unless `ingest` says otherwise."""
    section = {"source": source, "path": str(path), "shots_per_class": None, "val_per_class": 0,
               "test_size": None, "test_fraction": 0.0, "seed": 0, **(ingest or {})}
    return tiny_params(ingest=section, validate={"min_side": 8, "min_per_class": 1,
                                                 **(validate or {})})


def pipeline_params(images: Path) -> dict:
    """params.yaml of the end-to-end tests, every key stated (DVC tracks single keys such as
    validate.max_pixels): the whole pipeline on `images` at 64 px in a few minutes."""
    return tiny_params(
        size=EXPORT_SIZE,
        ingest={"source": "folder", "path": str(images), "shots_per_class": 6,
                "val_per_class": 3, "test_size": None, "test_fraction": 0.25, "seed": 0},
        validate={"min_side": 8, "min_per_class": 2},
        features={"batch_size": 16},
        finetune={"strategy": "linear_probe", "c_grid": [0.1, 1.0]},
        evaluate={"bootstrap": 200, "cnn_epochs": 3},
        # a handful of test images moves accuracy in 10-point steps: the int8/fp16 gates are
        # tested in tests/unit/deploy/test_quantize.py, here they must not decide the run
        export={"batch_size": 16, "max_int8_drop": 100.0, "max_fp16_drop": 100.0},
    ).to_dict()


# ---- features ------------------------------------------------------------------------------


def blobs(per_class: int, seed: int, dim: int = 16, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in embeddings: k Gaussian clusters (unit noise, centres 4 apart on the axes, all
    shifted by +5) and their labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per_class)
    centres = 4 * np.eye(k, dim) + 5
    return centres[y] + rng.normal(size=(len(y), dim)), y


# ---- images --------------------------------------------------------------------------------


def make_pattern_images(root: Path, per_class: int, size: int = 40, seed: int = 0,
                        classes: tuple[str, ...] = ("circle", "stripes", "square"),
                        prefix: str = "") -> Path:
    """Write `root/<class>/<prefix><class>_<i>.png`: visually distinct classes, random jitter."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cx, cy = rng.uniform(0.35, 0.65, 2) * size
            if label == "circle":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (size * rng.uniform(0.2, 0.3)) ** 2
                color = (220, 60, 40)
            elif label == "stripes":
                mask = ((xx + int(rng.integers(0, 8))) // 4) % 2 == 0
                color = (40, 160, 220)
            else:
                half = size * rng.uniform(0.15, 0.25)
                mask = (abs(xx - cx) < half) & (abs(yy - cy) < half)
                color = (60, 200, 80)
            img = np.full((size, size, 3), 245, np.uint8)
            img[mask] = color
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{prefix}{label}_{i:03d}.png")
    return root


_counter = [0]  # makes every generated image different from every other one


def unique_pixels(size: tuple[int, int] = (16, 16), channels: int = 3) -> np.ndarray:
    """uint8 (H, W, C) noise seeded by a running counter: never the same twice in a session."""
    _counter[0] += 1
    rng = np.random.default_rng(_counter[0])
    w, h = size
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def write_image(path: Path, size: tuple[int, int] = (16, 16), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(unique_pixels(size)).save(path, format=fmt)
    return path


def image_tree(root: Path, per_class: dict[str, int], suffix: str = ".png") -> Path:
    """root/<class>/<class>_<i><suffix>, `per_class[class]` images each."""
    fmt = "JPEG" if suffix in (".jpg", ".jpeg") else "PNG"
    for label, n in per_class.items():
        for i in range(n):
            write_image(root / label / f"{label}_{i}{suffix}", fmt=fmt)
    return root


def odd_mode_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Write one image per awkward mode; return the RGB each must decode to (pixel 0, 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")  # red in CMYK
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(folder / "deep16.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 2] = rgba[..., 3] = 255  # opaque blue ...
    rgba[0, 0] = (255, 0, 0, 0)  # ... except one fully transparent pixel
    Image.fromarray(rgba).save(folder / "alpha.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(folder / "palette.png")
    Image.new("L", (16, 16), 100).save(folder / "gray.png")
    return {"cmyk.jpg": (255, 0, 0), "deep16.png": (128, 128, 128),
            "alpha.png": (255, 255, 255), "palette.png": (10, 200, 30), "gray.png": (100,) * 3}


def odd_decoding_images(folder: Path) -> list[Path]:
    """One file per decoding path of graft.data.images: modes, alpha, palette, 16-bit, EXIF,
    sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    images = {
        "rgb.png": Image.fromarray(rgb),
        "gray.png": Image.fromarray(rgb[..., 0]),
        "gray16.png": Image.fromarray(rng.integers(0, 65536, (30, 41), dtype=np.uint16)),
        "rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (37, 53), np.uint8)])),
        "la.png": Image.fromarray(rgb[..., :2].copy(), mode="LA"),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "thin.png": Image.fromarray(rgb[:3, :50]),  # far from square
        "big.jpg": Image.fromarray(np.resize(rgb, (300, 200, 3))),
    }
    paths = []
    for name, img in images.items():
        img.save(folder / name)
        paths.append(folder / name)
    transparent = Image.fromarray(rgb).convert("P")
    transparent.info["transparency"] = 0
    transparent.save(folder / "palette_alpha.png", transparency=0)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise when shown
    rotated.save(folder / "exif.jpg", exif=exif)
    return [*paths, folder / "palette_alpha.png", folder / "exif.jpg"]


def png_bytes(width: int, height: int, rows: int) -> bytes:
    """A grayscale PNG whose header declares width×height but carries only `rows` rows of data:
    a decompression bomb when the size is large (nothing the size of the image is ever built)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    raw = (b"\0" + b"\0" * width) * rows  # filter byte + one row of black, `rows` times
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> Path:
    """A labels CSV (the `csv` ingest source)."""
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An idx-ubyte file (the Fashion-MNIST format), gzipped when `compress`."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


# ---- trees left untouched ----------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under root: files by sha256, symlinks by target, folders by name.

    Compared before and after a run to prove the input was not modified."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            elif not path.is_file():  # a FIFO: reading it would block
                out[rel] = ("special", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@contextlib.contextmanager
def unchanged(root: Path) -> Iterator[None]:
    """Assert that the tree under `root` is byte-for-byte the same after the block, even when
    the block raises."""
    before = tree_digest(root)
    try:
        yield
    finally:
        assert tree_digest(root) == before, f"{root} was modified"


# ---- projects ---------------------------------------------------------------------------------


def make_split_project(root: Path, per_split: dict[str, int], size: int = 40,
                       test_labels: dict[str, str] | None = None) -> Layout:
    """data/prepared/<split>/<class>/*.png (`per_split[split]` images per class, seed = the
    split's position) and the manifest listing them; `test_labels` renames test labels."""
    layout = Layout(root)
    rows = []
    for seed, (split, per_class) in enumerate(per_split.items()):
        make_pattern_images(layout.prepared / split, per_class, size=size, seed=seed)
        for path in sorted((layout.prepared / split).rglob("*.png")):
            label = path.parent.name
            if split == "test" and test_labels:
                label = test_labels.get(label, label)
            rows.append({"path": path.relative_to(layout.prepared).as_posix(), "label": label,
                         "split": split, "sha256": sha256_file(path), "width": size,
                         "height": size, "mode": "RGB"})
    write_manifest(layout.manifest, pd.DataFrame(rows))
    return layout


def copy_stage_outputs(base: Path, dest: Path) -> Layout:
    """A fresh project at `dest` holding `base`'s data/ (images, manifest, feature store) and
    metrics/ (when there are any), for tests that each change it from the same start."""
    shutil.copytree(base / "data", dest / "data")
    if (base / "metrics").exists():
        shutil.copytree(base / "metrics", dest / "metrics")
    return Layout(dest)


def copy_project(dest: Path) -> Path:
    """The files `dvc repro` needs (dvc.yaml and the modules it lists as deps) in a new folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def drop_val(layout: Layout) -> None:
    """Remove the validation rows, so training keeps its last weights: with them, early stopping
    would restore the start whenever the probe head already scores 100% on validation."""
    df = read_manifest(layout.manifest)
    write_manifest(layout.manifest, df.loc[df["split"] != "val"])


def write_train_manifest(layout: Layout, files: list[Path], size: int = 40) -> pd.DataFrame:
    """A manifest listing `files` (under data/prepared) as training images of their folder's
    class; returned."""
    rows = []
    for f in files:
        rows.append({"path": str(f.relative_to(layout.prepared)), "label": f.parent.name,
                     "split": "train", "sha256": sha256_file(f), "width": size, "height": size,
                     "mode": "RGB"})
    df = pd.DataFrame(rows)
    write_manifest(layout.manifest, df)
    return df


def write_prepared(layout: Layout, rows: list[tuple[str, str, str]]) -> None:
    """A hand-made data/prepared: rows of (file name, label, split); 'dup:<name>' copies <name>."""
    records = []
    for name, label, split in rows:
        path = layout.prepared / "images" / name
        if name.startswith("dup:"):
            path = layout.prepared / "images" / f"copy_of_{name[4:]}"
            shutil.copyfile(layout.prepared / "images" / name[4:], path)
        else:
            write_image(path)
        records.append([f"images/{path.name}", label, split, sha256_file(path), 16, 16, "RGB"])
    write_manifest(layout.manifest, pd.DataFrame(
        records, columns=["path", "label", "split", "sha256", "width", "height", "mode"]))


def manifest_frame(rows: list[tuple[str, str, str]], prefix: str = "images") -> pd.DataFrame:
    """A manifest DataFrame of (sha256, label, split) rows, paths `<prefix>/<sha256>.png`."""
    return pd.DataFrame([{"path": f"{prefix}/{sha}.png", "label": label, "split": split,
                          "sha256": sha, "width": 16, "height": 16, "mode": "RGB"}
                         for sha, label, split in rows])


def save_test_checkpoint(path: Path, size: int, zero_head: bool = False,
                         pretrained: bool = False, strategy: str = "test") -> None:
    """A 3-class Lite0 checkpoint of CLASSES at `size` px: random head (seed 0), or zeroed."""
    import torch

    from graft.models.backbones import create_model, get_spec
    from graft.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model(BACKBONE, len(CLASSES), pretrained=pretrained)
    if zero_head:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
    save_checkpoint(path, model, BACKBONE, CLASSES, get_spec(BACKBONE).preprocessing(size),
                    strategy=strategy)


def make_evaluate_project(root: Path, zero_head: bool = False,
                          test_labels: dict[str, str] | None = None) -> Layout:
    """The evaluate and baselines tests' project: pattern PNGs in train/val/test splits, a
    manifest, and models/model.pt, a 3-class Lite0 checkpoint at 32 px (random head, or zeroed).

    `test_labels` renames test labels in the manifest (e.g. {"square": "hexagon"}) to build a
    manifest the model cannot score.
    """
    layout = make_split_project(root, EVALUATE_SPLITS, test_labels=test_labels)
    save_test_checkpoint(layout.model, SIZE, zero_head=zero_head)
    return layout


def make_export_project(root: Path, per_class: int = 2) -> Layout:
    """The export and predict tests' project: a manifest of a few pattern PNGs (train and test
    rows) and models/model.pt, a pretrained 3-class Lite0 at 64 px."""
    layout = make_split_project(root, {"train": per_class, "test": per_class})
    save_test_checkpoint(layout.model, EXPORT_SIZE, pretrained=True, strategy="linear_probe")
    return layout


def constant_checkpoint(path: Path, names: list[str], favourite: int) -> Path:
    """A real Lite0 checkpoint at 32 px whose head always answers names[favourite]."""
    import torch

    from graft.models.backbones import create_model, get_spec
    from graft.models.checkpoint import save_checkpoint

    model = create_model(BACKBONE, len(names), pretrained=False)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[favourite] = 5.0
    save_checkpoint(path, model, BACKBONE, names, get_spec(BACKBONE).preprocessing(32))
    return path


def save_timm_weights(folder: Path, suffix: str = ".pth") -> Any:
    """A random `TIMM_ARCH` (with its 1000-class head) saved as folder/<arch><suffix>; the
    module is returned."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCH, pretrained=False).eval()
    folder.mkdir(parents=True, exist_ok=True)
    save = save_file if suffix == ".safetensors" else torch.save
    save(model.state_dict(), folder / f"{TIMM_ARCH}{suffix}")
    return model


def make_version(models: Path, tmp: Path, name: str, accuracy: float = 0.5) -> Path:
    """A staged registry version whose model.pt holds `name` (a stand-in for real weights) and
    whose testset/ holds one image."""
    from graft.lifecycle import registry

    src = tmp / f"src-{name}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.pt").write_text(name)
    info = {"version": f"2026010{len(name) % 9}T000000Z-{name}", "created": "2026-01-01",
            "accuracy": accuracy, "model_sha256": "ab" * 32}
    return registry.stage(models, {registry.MODEL: src / "model.pt",
                                   f"{registry.TESTSET}/deadbeef.png": src / "model.pt"}, info)


# A process that holds models/.lock for argv[2] seconds (prints 'held' once it has it).
HOLD_LOCK = ("import sys, time; from pathlib import Path; from graft.lifecycle import registry\n"
             "with registry.lock(Path(sys.argv[1])):\n"
             "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")


# ---- end-to-end projects ------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now, for a test's own server on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(args: list[str], cwd: Path, env: dict) -> str:
    """Run a command; its stdout + stderr, or an assertion naming it and its output tails."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def fp32_only_export(root: Path, params: dict) -> None:
    """Switch the int8/fp16 exports off, and their outs with them, as dvc.yaml says to (for the
    retrain tests: fp32 ONNX alone is faster)."""
    params["export"] |= {"int8": False, "fp16": False}
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    outs = dvc["stages"]["export"]["outs"]
    dvc["stages"]["export"]["outs"] = [o for o in outs if not str(o).endswith(
        ("int8.onnx", "fp16.onnx"))]
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))


# ---- tiny ONNX models (no torch export: a few kB, built in milliseconds) ------------------------


def tiny_onnx(path: Path, n_classes: int = 3, size: int = 8, graph_size: int | None = None,
              **meta: Any) -> Path:
    """A Graft-like .onnx file: mean colour of a (N, 3, S, S) image → (N, n_classes) logits,
    with graft.* metadata for `size` px and CLASSES-like names; `meta` overrides any key (the
    hostile-metadata tests); graph_size: the input size the graph itself declares."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from graft.deploy.onnx_model import attach_metadata

    s = graph_size or size
    rng = np.random.default_rng(n_classes)
    weight = numpy_helper.from_array(rng.normal(size=(3, n_classes)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(n_classes, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes])],
        [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    values = {"class_names": [f"class{i}" for i in range(n_classes)], "mean": [0.5] * 3,
              "std": [0.5] * 3, "input_size": size, "resize": "shorter_side_bilinear_center_crop",
              "backbone": "tiny", "version": "test", "export_id": "e1",
              "source_sha256": "0" * 64, **meta}
    attach_metadata(path, {k: v for k, v in values.items() if v is not None})
    return path


def onnx_set(folder: Path, model_pt: bytes = b"weights", export_id: str = "e1",
             variants: tuple[str, ...] = ("fp32",), **meta: Any) -> dict[str, Path]:
    """folder/model.pt holding `model_pt` (a stand-in: only its hash matters to the set checks)
    and an ONNX set of one export made from it: {precision: path}."""
    from graft.core.layout import ONNX_FILES

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(model_pt)
    source = hashlib.sha256(model_pt).hexdigest()
    return {v: tiny_onnx(folder / ONNX_FILES[v], export_id=export_id, source_sha256=source,
                         precision=v, **meta) for v in variants}


def tiny_champion(models: Path, tmp: Path, model_pt: bytes = b"champion", **meta: Any) -> Path:
    """models/champion/: a promoted version holding a tiny ONNX set (fp32 + int8) of `model_pt`,
    every file's sha256 recorded; returns the champion folder."""
    from graft.lifecycle import registry

    files = onnx_set(tmp / f"champion-src-{model_pt.hex()[:8]}", model_pt,
                     variants=("fp32", "int8"), **meta)
    src = next(iter(files.values())).parent
    info = {"version": "20260101T000000Z-champion", "created": "2026-01-01", "accuracy": 0.9}
    with registry.lock(models):
        staged = registry.stage(models, {p.name: p for p in src.iterdir()}, info)
        registry.promote(models, staged)
    return models / registry.CHAMPION


def graft_cli(*args: str | Path) -> tuple[int, str]:
    """`graft ARGS` in-process: (exit code, stdout + stderr). An exception the CLI let through
    (a traceback for the user) fails the test here."""
    from typer.testing import CliRunner

    from graft.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def assert_user_error(code: int, output: str, *fragments: str | Path) -> str:
    """Exit code 1 and an `error: …` line holding every fragment (a file, a rule); no traceback.
    Returns the error line."""
    assert code == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert lines, output
    for fragment in fragments:
        assert str(fragment) in output, f"{fragment!r} not in {output!r}"
    return lines[0]
