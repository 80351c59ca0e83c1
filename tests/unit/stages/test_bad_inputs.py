"""Bad inputs through the ingest and validate stages, one test each: a clear error naming the
file, and the input tree left untouched (bad params files: tests/unit/core/test_config.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from graft.core.layout import Layout
from graft.data.images import ImageError, read_image
from graft.data.manifest import read_manifest
from graft.data.sources import IngestError
from graft.stages import ingest, validate
from tests.fixtures import (
    image_tree,
    ingest_params,
    odd_mode_images,
    png_bytes,
    unchanged,
    write_csv,
    write_image,
)


def _ingest_validate(src: Path, tmp_path: Path, **validate_overrides) -> Layout:
    """ingest then validate `src` (a folder source), checking that `src` stays untouched."""
    layout = Layout(tmp_path / "proj")
    p = ingest_params("folder", src, validate=validate_overrides)
    with unchanged(src):
        ingest.run(p, layout)
        validate.run(p, layout)
    return layout


def _fails(src: Path, tmp_path: Path, *fragments: str) -> str:
    """ingest + validate must raise ValidationError whose message holds every fragment."""
    with pytest.raises(validate.ValidationError) as err:
        _ingest_validate(src, tmp_path)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    """Two good classes, two images each; each test adds its bad file."""
    return image_tree(tmp_path / "src", {"good": 2, "other": 2})


def test_empty_class_folder(src, tmp_path):
    (src / "empty class").mkdir()
    with unchanged(src), pytest.raises(IngestError, match=r"empty class: class folder has no"):
        ingest.run(ingest_params("folder", src), Layout(tmp_path / "proj"))


def test_zero_byte_file(src, tmp_path):
    (src / "good" / "zero.png").write_bytes(b"")
    _fails(src, tmp_path, "decodes: 1 file(s)", "zero.png (empty file (0 bytes))")
    df = read_manifest(Layout(tmp_path / "proj").manifest)
    row = df.loc[df["path"].str.endswith("zero.png")].iloc[0]
    assert (row["mode"], row["width"]) == ("unreadable", "")  # ingest lists it, validate judges


def test_truncated_png_and_jpeg(src, tmp_path):
    for name, fmt in (("cut.png", "PNG"), ("cut.jpg", "JPEG")):
        full = write_image(tmp_path / name, size=(64, 64), fmt=fmt).read_bytes()
        (src / "good" / name).write_bytes(full[: len(full) // 2])
    _fails(src, tmp_path, "decodes: 2 file(s)", "cut.png (truncated or corrupt image data",
           "cut.jpg (truncated or corrupt image data")


def test_text_file_named_jpg(src, tmp_path):
    (src / "good" / "letter.jpg").write_text("Dear reader, this is not a picture.\n")
    _fails(src, tmp_path, "letter.jpg (not an image (unrecognised format))")


def test_cmyk_16bit_rgba_palette_gray_are_converted_not_rejected(src, tmp_path):
    expected = odd_mode_images(src / "modes")
    for name, rgb in expected.items():
        img = read_image(src / "modes" / name)
        assert img.mode == "RGB" and img.size == (16, 16), name
        assert np.abs(np.asarray(img)[0, 0].astype(int) - rgb).max() <= 2, name
    assert tuple(np.asarray(read_image(src / "modes" / "alpha.png"))[5, 5]) == (0, 0, 255)
    layout = _ingest_validate(src, tmp_path)
    df = read_manifest(layout.manifest)
    modes = dict(zip(df["path"].map(lambda p: Path(p).name), df["mode"], strict=True))
    assert modes["cmyk.jpg"] == "CMYK" and modes["deep16.png"].startswith("I")
    assert (modes["alpha.png"], modes["palette.png"], modes["gray.png"]) == ("RGBA", "P", "L")


def test_exif_orientation_is_applied(src, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(src / "good" / "turned.jpg", exif=exif)
    assert read_image(src / "good" / "turned.jpg").size == (20, 40)  # stored 40 wide, shown 20
    _ingest_validate(src, tmp_path)


def test_one_pixel_image_fails_min_side(src, tmp_path):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(src / "good" / "dot.png")
    _fails(src, tmp_path, "min_side: 1 file(s)", "dot.png (shortest side 1 px < min_side 8)")


def test_decompression_bomb_is_refused_before_decoding(src, tmp_path, monkeypatch):
    (src / "good" / "bomb.png").write_bytes(png_bytes(30000, 30000, rows=2))  # 0.9 Gpx declared
    (src / "good" / "big.png").write_bytes(png_bytes(10000, 5000, rows=2))  # 50 Mpx > 40 Mpx

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    with monkeypatch.context() as patch:
        patch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
        for name in ("bomb.png", "big.png"):
            start = time.perf_counter()
            with pytest.raises(ImageError, match=f"{name}: .*decompression bomb"):
                read_image(src / "good" / name, max_pixels=40_000_000)
            assert time.perf_counter() - start < 5  # s, loose for a busy box; decoding is slower
    _fails(src, tmp_path, "decodes: 2 file(s)", "bomb.png (too many pixels",
           "big.png (10000×5000 = 50,000,000 pixels exceeds the limit")


def test_symlink_outside_the_data_root_is_refused(src, tmp_path):
    outside = write_image(tmp_path / "elsewhere" / "secret.png")
    os.symlink(outside, src / "good" / "link.png")
    with unchanged(src), pytest.raises(IngestError, match=r"good/link\.png: symlink resolves"):
        ingest.run(ingest_params("folder", src), Layout(tmp_path / "proj"))
    (src / "good" / "link.png").unlink()
    os.symlink(outside.parent, src / "linked class")
    with unchanged(src), pytest.raises(IngestError, match=r"linked class: symlink resolves to "
                                                          r".*outside the data root"):
        ingest.run(ingest_params("folder", src), Layout(tmp_path / "proj"))


def test_spaces_and_non_ascii_names_work_end_to_end(src, tmp_path):
    write_image(src / "chat noir é" / "photo 1 — ü.png")
    write_image(src / "chat noir é" / "日本 語.jpg", fmt="JPEG")
    layout = _ingest_validate(src, tmp_path)
    df = read_manifest(layout.manifest)
    names = {"images/chat noir é/photo 1 — ü.png", "images/chat noir é/日本 語.jpg"}
    assert names <= set(df["path"])
    assert (df["label"] == "chat noir é").sum() == 2
    assert all((layout.prepared / p).is_file() for p in df["path"])


def test_single_class_fails_clearly(tmp_path):
    src = image_tree(tmp_path / "src", {"only": 3})
    _fails(src, tmp_path, "at_least_two_classes: observed 1")


def test_test_labels_not_seen_in_training(tmp_path):
    root = tmp_path / "src"
    rows = [(write_image(root / f"{label}{i}.png").name, label, "train")
            for label in ("cat", "dog") for i in range(2)]
    rows.append((write_image(root / "zebra0.png").name, "zebra", "test"))
    csv_path = write_csv(root / "labels.csv", rows, ("path", "label", "split"))
    layout = Layout(tmp_path / "proj")
    p = ingest_params("csv", csv_path)
    with unchanged(root), pytest.raises(validate.ValidationError) as err:
        ingest.run(p, layout)
        validate.run(p, layout)
    assert "label_in_train_classes: 1 file(s)" in str(err.value)
    assert "zebra0.png (label 'zebra' (test) is not a training class)" in str(err.value)
