"""Errors a user must be able to act on (issue 10, items 10–16): one `error: <file>: <what>
(<rule>)` line, no traceback, no hang, every refused entry of a run named at once."""

from __future__ import annotations

import contextlib
import csv
import errno
import importlib.util
import io
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

import graft.deploy
from graft.core import files
from graft.core.config import ConfigError, load_params
from graft.core.layout import Layout
from tests.fixtures import (
    assert_user_error,
    graft_cli,
    image_tree,
    ingest_params,
    make_split_project,
    tiny_onnx,
    tiny_params,
    unchanged,
    write_csv,
    write_image,
)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail the test instead of hanging it (a FIFO read blocks forever)."""
    def hung(*_):
        raise AssertionError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _ingest(src: Path, tmp_path: Path, source: str = "folder", **ingest) -> tuple[int, str]:
    layout = Layout(tmp_path / "proj")
    layout.root.mkdir(exist_ok=True)
    layout.params.write_text(yaml.safe_dump(ingest_params(source, src, ingest=ingest).to_dict()))
    with unchanged(src if src.is_dir() else src.parent):
        return graft_cli("ingest", "--no-prefect", "--root", layout.root)


def test_a_fifo_in_a_class_folder_is_skipped_by_name(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 2, "b": 2})
    os.mkfifo(src / "a" / "pipe.png")
    with deadline(60):
        code, out = _ingest(src, tmp_path)
    assert code == 0, out
    report = (tmp_path / "proj" / "reports" / "ingest.json").read_text()
    assert "pipe.png" in report and "not a regular file (a FIFO)" in report


def test_odd_names_and_links_are_refused_all_in_one_pass(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 2, "b": 2})
    (src / "empty class").mkdir()
    os.symlink(tmp_path, src / "b" / "escape.png")  # leaves the data root
    os.symlink(src / "a" / "loop.png", src / "a" / "loop.png")  # a symlink loop
    (src / "a" / os.fsdecode(b"caf\xe9.png")).write_bytes(b"x")  # not UTF-8 (Latin-1)
    for i in range(6):
        (src / "b" / f"broken{i}.png").write_bytes(b"\x89PNG broken")
    code, out = _ingest(src, tmp_path)
    assert_user_error(code, out, "ingest refused 4 entries", "empty class: class folder has no",
                      "escape.png: symlink resolves to", "loop.png: cannot follow it",
                      "caf\\xe9.png: name is not valid UTF-8",
                      "6 file(s) that do not decode", "broken5.png")
    assert not (tmp_path / "proj" / "data" / "prepared").exists()


def test_validate_names_the_users_own_file(tmp_path):
    src = image_tree(tmp_path / "my-images", {"Trouser": 2, "Shirt": 2})
    (src / "Trouser" / "bomb.png").write_bytes(b"\x89PNG but cut short")
    code, out = _ingest(src, tmp_path)
    assert code == 0, out
    code, out = graft_cli("validate", "--no-prefect", "--root", tmp_path / "proj")
    assert_user_error(code, out, src / "Trouser" / "bomb.png")
    with open(tmp_path / "proj" / "reports" / "quarantine.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["origin"] for r in rows] == [str(src / "Trouser" / "bomb.png")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_class_folder_is_named(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 2, "b": 2})
    (src / "b").chmod(0)
    try:
        code, out = _ingest(src, tmp_path)
    finally:
        (src / "b").chmod(0o755)
    assert_user_error(code, out, src / "b", "cannot read folder")


def test_a_label_longer_than_a_file_name_still_ingests(tmp_path):
    data = image_tree(tmp_path / "data", {"a": 2})
    long = "x" * 300 + " ünïcode"
    rows = [(f"a/{p.name}", long if i else "short") for i, p in
            enumerate(sorted((data / "a").glob("*.png")))]
    csv_path = write_csv(data / "list.csv", rows, ("path", "label"))
    code, out = _ingest(csv_path, tmp_path, source="csv")
    assert code == 0, out


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    layout = make_split_project(tmp_path / "proj", {"train": 2, "test": 1}, size=16)
    layout.params.write_text(yaml.safe_dump(tiny_params(validate={"min_per_class": 1}).to_dict()))

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full)
    code, out = graft_cli("validate", "--no-prefect", "--root", layout.root)
    assert_user_error(code, out, layout.reports, "No space left on device", "free disk space")


BAD_PARAMS = [
    ("ingest", "val_per_class", -3), ("ingest", "shots_per_class", -2),
    ("ingest", "test_size", 0), ("ingest", "test_size", -1), ("ingest", "test_fraction", 1.5),
    ("evaluate", "batch_size", 0), ("export", "batch_size", 0),
    ("export", "calibration_images", 0), ("evaluate", "baseline_image_size", 0),
    ("evaluate", "bootstrap", -5), ("evaluate", "cnn_epochs", -1), ("validate", "min_side", -5),
    ("features", "image_size", 100000), ("retrain", "min_gain", -1),
    ("finetune", "lr", float("nan")), ("export", "max_abs_diff", float("inf")),
    ("ingest", "seed", 2**70), ("evaluate", "bootstrap", 10**9),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_PARAMS)
def test_every_params_key_is_range_checked_at_load(tmp_path, section, key, value):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError, match=rf"{path}: {section}\.{key}"):
        load_params(path)


def test_a_params_range_error_is_one_cli_line(tmp_path):
    (tmp_path / "params.yaml").write_text("retrain:\n  min_gain: -1\n")
    code, out = graft_cli("validate", "--no-prefect", "--root", tmp_path)
    assert_user_error(code, out, tmp_path / "params.yaml", "retrain.min_gain = -1",
                      "must be in [0, 1]")


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "finetune: {lr: 0.1}\n"


def test_a_yaml_alias_bomb_is_refused_fast(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 2048
    start = time.perf_counter()
    code, out = graft_cli("validate", "--no-prefect", "--root", tmp_path)
    line = assert_user_error(code, out, path, "alias bomb")
    assert time.perf_counter() - start < 10 and len(line) < 300
    path.write_text("finetune:\n  lr: 0.1\n  lr: 10\n")  # which one did they mean?
    with pytest.raises(ConfigError, match=r"line 3: key 'lr' appears twice"):
        load_params(path)
    path.unlink()
    os.mkfifo(path)
    with deadline(30), pytest.raises(ConfigError, match="not a regular file"):
        load_params(path)


HOSTILE_METADATA = {  # graph: 3 classes, 8 px
    "fewer names than outputs": ({"class_names": ["a", "b"]}, "graft.class_names"),
    "more names than outputs": ({"class_names": ["a", "b", "c", "d"]}, "graft.class_names"),
    "no names": ({"class_names": []}, "graft.class_names"),
    "a string for names": ({"class_names": "abc"}, "graft.class_names"),
    "std 0": ({"std": [0.0, 0.5, 0.5]}, "graft.std"),
    "huge input size": ({"input_size": 10**9}, "graft.input_size"),
    "a size the graph contradicts": ({"input_size": 16}, "graft.input_size"),
    "NaN mean": ({"mean": [float("nan"), 0.5, 0.5]}, "graft.mean"),
}


@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
def test_predict_checks_onnx_metadata_against_the_graph(tmp_path, case):
    meta, key = HOSTILE_METADATA[case]
    model = tiny_onnx(tmp_path / "m.onnx", n_classes=3, size=8, graph_size=8, **meta)
    image = write_image(tmp_path / "x.png")
    code, out = graft_cli("predict", image, "--model", model)
    assert_user_error(code, out, model, key)
    bundled = _template()  # the bundle's standalone predict.py refuses it too
    with pytest.raises(SystemExit, match=rf"error: {model}: metadata"):
        bundled.main([str(image), "--model", str(model)])


def _template():
    path = Path(graft.deploy.__file__).parent / "bundle_template" / "predict.py"
    spec = importlib.util.spec_from_file_location("bundle_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_predict_writes_real_csv(tmp_path, capsys):
    names = ['comma, inside', 'a "quoted" name', "new\nline"]
    model = tiny_onnx(tmp_path / "m.onnx", n_classes=3, size=8, class_names=names)
    images = [write_image(tmp_path / name) for name in ("a,b.png", 'say "hi".png', "plain.png")]
    assert _template().main([*map(str, images), "--model", str(model), "--format", "csv",
                             "--top-k", "3"]) == 0
    header, *rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert header == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"]
    assert sorted(r[0] for r in rows) == sorted(map(str, images))
    assert all(len(r) == 7 and set(r[1::2]) == set(names) for r in rows)
    code, out = graft_cli("predict", *images, "--model", model, "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][0] == "path" and {r[0] for r in rows[1:]} == set(map(str, images))
