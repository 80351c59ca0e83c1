"""Classify images with a Graft ONNX model. Needs only numpy, Pillow and onnxruntime.

    python predict.py IMAGE_OR_FOLDER... [--model model.int8.onnx] [--top-k 3] [--format json]

The class names and the preprocessing come from the model file's graft.* metadata. Decoding and
preprocessing below reproduce graft.data.images (read_image + Preprocessing) line for line, so this
script gives the same inputs, and so the same predictions, as `graft predict`. Files that cannot
be decoded are reported on stderr and skipped; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 40_000_000  # width × height; refused above this as a decompression bomb
RESIZE_POLICY = "shorter_side_bilinear_center_crop"
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
MAX_INPUT_SIZE = 4096  # pixels; a metadata size beyond it is refused, not allocated


class ImageError(ValueError):
    """An image file that cannot be used; str() is '<path>: <problem>'."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully into upright 8-bit RGB (as graft.data.images.read_image)."""
    with _open(path, max_pixels) as img:
        try:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(path, f"truncated or corrupt image data ({exc})") from None


def _open(path: Path | str, max_pixels: int) -> Image.Image:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror})") from None
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        problem = f"too many pixels, refused as a decompression bomb ({exc})"
        raise ImageError(path, problem) from None
    except OSError as exc:
        raise ImageError(path, f"cannot open image ({exc})") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise ImageError(path, f"{img.width}×{img.height} pixels exceeds the limit of "
                               f"{max_pixels:,}: refused as a possible decompression bomb")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def to_array(img: Image.Image, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """RGB image → float32 (3, size, size): shorter side to `size` (bilinear), centre crop,
    [0, 1], then (x − mean) / std per channel (as graft.data.images.Preprocessing.to_array)."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    hwc = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    x = hwc.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def metadata_problem(names, size, mean, std, inputs, outputs) -> str | None:
    """What is wrong with the model's metadata, checked against its graph (as graft's
    graft.deploy.onnx_model does), or None."""
    def numbers(v):
        return isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in v)

    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "graft.class_names must be a non-empty list of strings"
    if not numbers(mean) or not numbers(std) or min(std) <= 0:
        return "graft.mean / graft.std must be three finite numbers, std > 0"
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_INPUT_SIZE:
        return f"graft.input_size must be an integer in [1, {MAX_INPUT_SIZE}]"
    shape_in, shape_out = list(inputs[0].shape), list(outputs[0].shape)
    static = [(d, e) for d, e in zip(shape_in[1:] + shape_out[1:], [3, size, size, len(names)],
                                     strict=False) if isinstance(d, int)]
    if len(shape_in) != 4 or len(shape_out) != 2 or any(d != e for d, e in static):
        return (f"disagrees with the graph: input {shape_in}, output {shape_out}, metadata "
                f"input_size {size}, {len(names)} class names")
    return None


class Model:
    """A Graft .onnx file: metadata checked, session on the best available provider."""

    def __init__(self, path: Path | str) -> None:
        listed = set(ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=[p for p in PROVIDERS if p in listed])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "graft.class_names" not in meta:
            raise SystemExit(f"error: {path}: not a Graft model (no graft.* metadata)")
        if meta.get("graft.resize") != RESIZE_POLICY:
            raise SystemExit(f"error: {path}: resize policy {meta.get('graft.resize')!r} "
                             f"is not supported (this script implements {RESIZE_POLICY!r})")
        try:
            self.class_names = json.loads(meta["graft.class_names"])
            self.size = json.loads(meta["graft.input_size"])
            self.mean, self.std = json.loads(meta["graft.mean"]), json.loads(meta["graft.std"])
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"error: {path}: metadata unreadable ({exc})") from None
        problem = metadata_problem(self.class_names, self.size, self.mean, self.std,
                                   self.session.get_inputs(), self.session.get_outputs())
        if problem:
            raise SystemExit(f"error: {path}: metadata {problem}")
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: x})[0].astype(np.float64)
        if logits.shape[1:] != (len(self.class_names),):
            raise SystemExit(f"error: the model outputs {logits.shape[1:]} logits per image "
                             f"for {len(self.class_names)} class names")
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def collect(paths: list[str]) -> list[Path]:
    """Files as given (any suffix) plus image files inside folders, recursively, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"error: {path}: no such file or folder")
    return list(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    default = here / "model.int8.onnx"
    parser = argparse.ArgumentParser(description="Classify images with a Graft ONNX model.")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--model", type=Path,
                        default=default if default.exists() else here / "model.onnx")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    args = parser.parse_args(argv)
    model = Model(args.model)
    files = collect(args.paths)
    k = max(1, min(args.top_k, len(model.class_names)))
    rows, failures = [], 0
    for start in range(0, len(files), args.batch_size):
        arrays, kept = [], []
        for path in files[start : start + args.batch_size]:
            try:
                arrays.append(to_array(read_image(path), model.size, model.mean, model.std))
                kept.append(str(path))
            except ImageError as exc:
                print(f"skipped {path}: {exc.problem}", file=sys.stderr)
                failures += 1
        if kept:
            for path, p in zip(kept, model.probabilities(np.stack(arrays)), strict=True):
                best = np.argsort(-p, kind="stable")[:k]
                rows.append((path, [(model.class_names[i], float(p[i])) for i in best]))
    if args.format == "json":
        print(json.dumps([{"path": path, "top_k": [{"label": lb, "prob": round(p, 6)}
                                                    for lb, p in top]} for path, top in rows],
                         indent=2))
    elif args.format == "csv":  # `graft predict --format csv`'s columns; quoted: a path or a
        out = csv.writer(sys.stdout, lineterminator="\n")  # label may hold a comma or newline
        out.writerow(["path", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "prob")]])
        for path, top in rows:
            out.writerow([path, *[v for lb, p in top for v in (lb, f"{p:.6f}")]])
    else:  # an aligned table with a header, as `graft predict` prints it
        table = [["path", *[f"top-{i}" for i in range(1, k + 1)]]]
        table += [[path, *[f"{lb} ({p:.3f})" for lb, p in top]] for path, top in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
