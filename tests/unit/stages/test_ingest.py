"""Ingest stage: the four sources, reproducible stratified splits, de-duplication, atomic output
(split assignment alone: tests/unit/data/test_prepare.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.data import prepare
from graft.data.manifest import read_manifest
from graft.data.sources import FASHION_MNIST_CLASSES, IngestError
from graft.stages import ingest
from tests.fixtures import (
    image_tree,
    ingest_params,
    tree_digest,
    write_csv,
    write_idx,
    write_image,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _splits(layout: Layout) -> dict[str, set[str]]:
    df = read_manifest(layout.manifest)
    return {s: set(df.loc[df["split"] == s, "path"]) for s in ("train", "val", "test")}


def test_folder_source_splits_copies_bytes_and_reports(tmp_path):
    src = image_tree(tmp_path / "src", {"cat": 10, "dog": 10, "eel": 10})
    layout = Layout(tmp_path / "proj")
    p = ingest_params("folder", src, {"test_fraction": 0.2, "val_per_class": 2,
                                      "shots_per_class": 3})
    metrics = ingest.run(p, layout)

    assert metrics == {"source": "folder", "n_images": 21, "n_classes": 3, "n_train": 9,
                       "n_val": 6, "n_test": 6, "n_unlabeled": 0, "n_ignored": 0,
                       "n_duplicates": 0, "n_conflicts": 0}
    assert json.loads(layout.metrics("ingest").read_text()) == metrics
    df = read_manifest(layout.manifest)
    per = df.groupby(["split", "label"]).size()
    assert all(per[("train", c)] == 3 and per[("val", c)] == 2 and per[("test", c)] == 2
               for c in ("cat", "dog", "eel"))
    for row in df.itertuples():
        copy = layout.prepared / row.path
        original = src / row.label / Path(row.path).name
        assert copy.read_bytes() == original.read_bytes()  # unchanged bytes
        assert row.sha256 == sha256_file(copy)
        assert (row.width, row.height, row.mode) == (16, 16, "RGB")
    report = json.loads((layout.reports / "ingest.json").read_text())
    assert report["counts"]["val"] == {"cat": 2, "dog": 2, "eel": 2}


def test_splits_are_reproducible_nested_and_independent(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 12, "b": 12})
    runs = {}
    for shots, seed in ((2, 0), (4, 0), (4, 0), (4, 1)):
        layout = Layout(tmp_path / f"proj{shots}-{seed}-{len(runs)}")
        ingest.run(ingest_params("folder", src, {"shots_per_class": shots, "val_per_class": 2,
                                          "test_fraction": 0.25, "seed": seed}), layout)
        runs[(shots, seed, len(runs))] = _splits(layout)
    s2, s4, s4_again, s4_seed1 = runs.values()
    assert s4 == s4_again
    assert s2["train"] < s4["train"]  # more shots only add images
    assert s2["val"] == s4["val"] and s2["test"] == s4["test"]
    assert s4_seed1 != s4
    for split in (s4, s4_seed1):
        assert not (split["train"] & split["val"] or split["train"] & split["test"]
                    or split["val"] & split["test"])


def test_ignored_files_are_listed(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 2, "b": 2})
    write_image(src / "a" / "deeper" / "x.png")
    (src / "a" / "notes.txt").write_text("hi")
    (src / "README.md").write_text("top-level file")
    layout = Layout(tmp_path / "proj")
    metrics = ingest.run(ingest_params("folder", src), layout)
    report = json.loads((layout.reports / "ingest.json").read_text())
    reasons = {Path(i["path"]).name: i["reason"] for i in report["ignored"]}
    assert reasons == {"x.png": "nested deeper than <class>/<image>",
                       "notes.txt": "not an image file suffix",
                       "README.md": "file outside a class folder"}
    assert metrics["n_ignored"] == 3 and metrics["n_train"] == 4


def test_duplicates_keep_first_and_conflicts_keep_none(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 3, "b": 3})
    shutil.copyfile(src / "a" / "a_0.png", src / "a" / "a_copy.png")  # duplicate, same label
    shutil.copyfile(src / "b" / "b_0.png", src / "a" / "b_as_a.png")  # conflict: two labels
    layout = Layout(tmp_path / "proj")
    metrics = ingest.run(ingest_params("folder", src, {"test_fraction": 0.3}), layout)
    df = read_manifest(layout.manifest)
    names = set(df["path"].map(lambda p: Path(p).name))
    assert "a_0.png" in names and "a_copy.png" not in names
    assert not names & {"b_0.png", "b_as_a.png"}
    assert df["sha256"].is_unique
    report = json.loads((layout.reports / "ingest.json").read_text())
    assert Path(report["duplicates"][0]["dropped"]).name == "a_copy.png"
    assert report["conflicts"][0]["labels"] == ["a", "b"]
    assert (metrics["n_duplicates"], metrics["n_conflicts"], metrics["n_images"]) == (1, 1, 5)


def test_csv_source_with_split_column_and_name_clash(tmp_path):
    root = tmp_path / "data"
    write_image(root / "x" / "img.png")
    write_image(root / "y" / "img.png")  # same file name, different folder and content
    write_image(root / "z.png")
    write_image(root / "t.png")
    csv_path = write_csv(root / "list.csv", [("x/img.png", "cat", "train"),
                                             ("y/img.png", "cat", "train"),
                                             (str(root / "z.png"), "dog", "train"),
                                             ("t.png", "dog", "test")], ("path", "label", "split"))
    layout = Layout(tmp_path / "proj")
    metrics = ingest.run(ingest_params("csv", csv_path, {"val_per_class": 1}), layout)
    df = read_manifest(layout.manifest)
    assert metrics["n_test"] == 1 and df.loc[df["split"] == "test", "label"].tolist() == ["dog"]
    assert metrics["n_val"] == 0  # rows fixed to train stay in train
    assert df["path"].is_unique and len(df) == 4


def test_csv_missing_file_names_row_and_path(tmp_path):
    write_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "l.csv", [("a.png", "a"), ("gone.png", "b")],
                         ("path", "label"))
    with pytest.raises(IngestError, match=r"l\.csv, line 3: image 'gone.png' not found"):
        ingest.run(ingest_params("csv", csv_path), Layout(tmp_path / "proj"))
    bad = write_csv(tmp_path / "bad.csv", [("a.png", "a", "holdout")], ("path", "label", "split"))
    with pytest.raises(IngestError, match=r"bad\.csv, line 2: split 'holdout'"):
        ingest.run(ingest_params("csv", bad), Layout(tmp_path / "proj"))


def test_digits_source(tmp_path):
    layout = Layout(tmp_path / "proj")
    metrics = ingest.run(ingest_params("digits", "-", {"test_fraction": 0.2, "val_per_class": 5,
                                                "shots_per_class": 10}), layout)
    assert metrics["n_classes"] == 10 and metrics["n_train"] == 100 and metrics["n_val"] == 50
    assert 340 <= metrics["n_test"] <= 380  # 20% of 1797, per class
    df = read_manifest(layout.manifest)
    assert set(df["label"]) == {str(d) for d in range(10)}
    img = np.asarray(Image.open(layout.prepared / df["path"].iloc[0]))
    assert img.shape == (8, 8) and img.dtype == np.uint8 and img.max() > 200


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    folder = tmp_path / "fm"
    folder.mkdir()
    suffix = ".gz" if compress else ""
    for name, n in (("train", 60), ("t10k", 40)):
        labels = np.arange(n) % 10
        write_idx(folder / f"{name}-images-idx3-ubyte{suffix}",
                   rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{name}-labels-idx1-ubyte{suffix}", labels, compress)
    layout = Layout(tmp_path / "proj")
    metrics = ingest.run(ingest_params("fashion-mnist", folder, {
        "test_size": 20, "val_per_class": 2, "val_fraction": 0.5, "shots_per_class": 3}), layout)
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (30, 20, 20)
    df = read_manifest(layout.manifest)
    assert set(df["label"]) == set(FASHION_MNIST_CLASSES)
    assert df.loc[df["split"] == "test", "path"].str.contains("/t10k-").all()
    assert (df["width"] == 28).all() and (df["mode"] == "L").all()


def test_fashion_mnist_bad_idx_is_named(tmp_path):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"not an idx file")
    with pytest.raises(IngestError, match="train-images-idx3-ubyte: not an idx file"):
        ingest.run(ingest_params("fashion-mnist", folder), Layout(tmp_path / "proj"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty: missing train-images-idx3-ubyte"):
        ingest.run(ingest_params("fashion-mnist", tmp_path / "empty"), Layout(tmp_path / "proj"))
    with pytest.raises(IngestError, match="nope: Fashion-MNIST folder not found"):
        ingest.run(ingest_params("fashion-mnist", tmp_path / "nope"), Layout(tmp_path / "proj"))


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_default_demo_on_real_fashion_mnist(tmp_path):
    layout = Layout(tmp_path / "proj")
    metrics = ingest.run(ingest_params("fashion-mnist", FASHION, {
        "shots_per_class": 10, "val_per_class": 10, "test_size": 2000}), layout)
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (100, 100, 2000)
    assert len(list((layout.prepared / "images").rglob("*.png"))) == 2200  # only those used
    report = json.loads((layout.reports / "ingest.json").read_text())
    assert set(report["counts"]["test"].values()) == {200}


def test_rerun_replaces_and_failure_keeps_previous(tmp_path, monkeypatch):
    src = image_tree(tmp_path / "src", {"a": 3, "b": 3})
    layout = Layout(tmp_path / "proj")
    ingest.run(ingest_params("folder", src), layout)
    stale = layout.prepared / "stale.txt"
    stale.write_text("left from an older run")
    ingest.run(ingest_params("folder", src), layout)
    assert not stale.exists()
    before = tree_digest(layout.prepared)

    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(*args, **kwargs)

    original = prepare._write_one
    monkeypatch.setattr(prepare, "_write_one", crash)
    with pytest.raises(OSError, match="disk full"):
        ingest.run(ingest_params("folder", src), layout)
    assert tree_digest(layout.prepared) == before  # the previous output is whole
    assert sorted(p.name for p in layout.prepared.parent.iterdir()) == ["prepared"]


def test_relative_source_path_starts_at_the_project_root(tmp_path, monkeypatch):
    image_tree(tmp_path / "proj" / "pictures", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)  # not the project root: the path must not depend on cwd
    metrics = ingest.run(ingest_params("folder", "pictures"), Layout(tmp_path / "proj"))
    assert metrics["n_images"] == 4


def test_unlabeled_folder_joins_the_manifest_without_labels_and_validates(tmp_path):
    from graft.stages import validate

    src = image_tree(tmp_path / "src", {"cat": 4, "dog": 4})
    pool = tmp_path / "pool"
    write_image(pool / "a.png")
    write_image(pool / "deeper" / "b.png")
    shutil.copy(src / "cat" / "cat_0.png", pool / "copy_of_cat.png")  # a labelled image again
    shutil.copy(pool / "a.png", pool / "deeper" / "a_again.png")
    (pool / "notes.txt").write_text("not an image")
    layout = Layout(tmp_path / "proj")
    p = ingest_params("folder", src, {"unlabeled_path": str(pool), "test_fraction": 0.25})

    metrics = ingest.run(p, layout)

    df = read_manifest(layout.manifest)
    pool_rows = df.loc[df["split"] == "unlabeled"]
    assert sorted(pool_rows["path"]) == ["unlabeled/a.png", "unlabeled/deeper/b.png"]
    assert (pool_rows["label"] == "").all()
    assert sorted(pool_rows["origin"]) == [str(pool / "a.png"), str(pool / "deeper" / "b.png")]
    assert metrics["n_unlabeled"] == 2 and metrics["n_classes"] == 2
    assert metrics["n_train"] + metrics["n_test"] == 8
    report = json.loads(layout.report("ingest.json").read_text())
    assert [c["dropped"] for c in report["unlabeled_copies"]] == [str(pool / "copy_of_cat.png")]
    reasons = {Path(i["path"]).name: i["reason"] for i in report["ignored"]}
    assert reasons["notes.txt"] == "not an image file suffix"
    assert reasons["a_again.png"].startswith("same content as")
    checked = validate.run(p, layout)
    assert checked["n_unlabeled"] == 2 and all(checked["checks"].values())

    inside = ingest_params("folder", src, {"unlabeled_path": str(src / "cat")})
    with pytest.raises(IngestError, match="overlaps the labelled folder"):
        ingest.run(inside, Layout(tmp_path / "proj2"))
