"""THE way an image is decoded and normalised: training, evaluation, export and predict share it.

`read_image` turns any supported file into an upright 8-bit RGB image or raises `ImageError`
naming the file and the problem; `Preprocessing.to_array` turns that image into the network's
input. Nothing else in Graft opens an image file.
"""

from __future__ import annotations

import stat
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 40_000_000  # width × height; a 40 MP RGB image is 120 MB decoded


class ImageError(ValueError):
    """An image file that cannot be used; str() is '<path>: <problem>'."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self) -> tuple:  # picklable: it crosses processes (Dask workers, torchrun)
        return type(self), (self.path, self.problem)


def probe(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int, str]:
    """(width, height, mode) from the header alone: cheap, and safe against decompression bombs."""
    with _open(path, max_pixels) as img:
        return img.width, img.height, img.mode


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully into upright 8-bit RGB: EXIF rotation applied, first frame of animations,
    CMYK / 16-bit / palette / grayscale / alpha converted (alpha composited over white)."""
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
        info = path.stat()
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the decoder forever
        raise ImageError(path, "not a regular file")
    size = info.st_size
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; we refuse by our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"too many pixels, refused as a decompression bomb ({exc})") \
            from None
    except OSError as exc:
        raise ImageError(path, f"cannot open image ({exc})") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise ImageError(
            path,
            f"{img.width}×{img.height} = {img.width * img.height:,} pixels exceeds the limit of "
            f"{max_pixels:,}: refused as a possible decompression bomb",
        )
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float grayscale: scale the full range to 8 bits instead of clipping at 255.
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


@dataclass(frozen=True)
class Preprocessing:
    """What the network expects: resize the shorter side to `size`, centre-crop size×size,
    scale to [0, 1], then (x − mean) / std per channel. Travels with every saved model."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shorter_side_bilinear_center_crop"

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image → float32 array (3, size, size)."""
        return self.normalise(np.moveaxis(self.to_uint8(img), -1, -3))

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """Resized and cropped, not yet normalised: uint8 (size, size, 3). Compact for caching."""
        w, h = img.size
        scale = self.size / min(w, h)
        new_w, new_h = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img, dtype=np.uint8)

    def normalise(self, chw: Any) -> Any:
        """uint8 (..., 3, H, W) → float32 (..., 3, H, W): (x / 255 − mean) / std per channel.

        The one normalisation of Graft: a numpy array (decoding, export, predict) or a torch
        tensor on any device (training batches after augmentation), with the same float32
        arithmetic, so both give bit-identical inputs."""
        mean = np.asarray(self.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(3, 1, 1)
        if isinstance(chw, np.ndarray):
            return np.ascontiguousarray((chw.astype(np.float32) / 255.0 - mean) / std)
        import torch  # a tensor was given: torch is already loaded

        x = chw.to(torch.float32) / 255.0
        return (x - torch.from_numpy(mean).to(x.device)) / torch.from_numpy(std).to(x.device)

    def load(self, paths: Sequence[Path | str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode and normalise a batch of files → float32 (N, 3, size, size)."""
        return np.stack([self.to_array(read_image(p, max_pixels)) for p in paths])

    def load_uint8(self, paths: Sequence[Path | str],
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Decode, resize and crop a batch of files, not yet normalised → uint8 (N, 3, size,
        size): what augmentation works on before `normalise`."""
        arrays = [self.to_uint8(read_image(p, max_pixels)) for p in paths]
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["size"]), tuple(d["mean"]), tuple(d["std"]), d.get("resize", cls.resize))


def decoded_batches(paths: Sequence[Path | str], pre: Preprocessing, batch_size: int,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[np.ndarray]:
    """`paths` decoded and normalised in batches (float32 (≤batch_size, 3, S, S)), in order; the
    next batch is decoded in a thread while the caller works on this one."""
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(pre.load, batches[0], max_pixels)
        for i in range(len(batches)):
            x = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(pre.load, batches[i + 1], max_pixels)
            yield x
