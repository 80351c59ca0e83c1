"""`graft predict`: inputs collected from files and folders, top-k agreeing with the torch model,
bad files reported and skipped with a non-zero exit code, the three output formats."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from graft.deploy.onnx_model import OnnxModelError
from graft.deploy.predict import PredictError, collect_inputs, format_rows, main, predict
from graft.models.checkpoint import load_checkpoint
from graft.models.inference import run_model
from tests.fixtures import CLASSES


def test_collect_inputs_recurses_sorts_and_keeps_named_files(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for name in ("b/z.png", "b/a.JPG", "b/deep/m.webp", "b/notes.txt", "single.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = collect_inputs([tmp_path / "single.txt", tmp_path / "b", tmp_path / "b" / "z.png"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["single.txt", "b/a.JPG", "b/deep/m.webp", "b/z.png"]
    with pytest.raises(PredictError, match=r"nowhere: no such file or folder"):
        collect_inputs([tmp_path / "nowhere"])


def test_predict_on_folder_agrees_with_torch(exported):
    layout, _ = exported
    folder = layout.prepared / "test"
    rows, failures = predict(layout.onnx, [folder], top_k=2, batch_size=4)
    assert failures == []
    files = collect_inputs([folder])
    assert [r["path"] for r in rows] == [str(f) for f in files]
    model, meta = load_checkpoint(layout.model)
    torch_top1 = run_model(model, files, meta["preprocessing"], batch_size=4).argmax(1)
    assert [r["top_k"][0][0] for r in rows] == [CLASSES[i] for i in torch_top1]
    for r in rows:
        (l1, p1), (l2, p2) = r["top_k"]
        assert l1 != l2 and 1.0 >= p1 >= p2 >= 0.0


def test_bad_files_are_reported_skipped_and_exit_nonzero(exported, tmp_path, capsys):
    layout, _ = exported
    good = sorted((layout.prepared / "test" / "circle").glob("*.png"))
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in good:
        shutil.copy(f, folder / f.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a .png that is not
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    code = main(layout.onnx, [folder, notes], top_k=1, fmt="json", batch_size=2)
    out, err = capsys.readouterr()
    assert code == 1
    printed = json.loads(out)
    assert [r["path"] for r in printed] == [str(folder / f.name) for f in good]
    assert all(len(r["top_k"]) == 1 for r in printed)
    assert f"skipped {folder / 'broken.png'}:" in err
    assert f"skipped {notes}: not an image" in err
    assert "2 of 4 file(s) skipped" in err


def test_main_exits_zero_when_all_files_are_read(exported, capsys):
    layout, _ = exported
    assert main(layout.onnx, [layout.prepared / "test"], top_k=3, fmt="csv", batch_size=32) == 0
    out, err = capsys.readouterr()
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"]
    assert len(table) == 1 + 6 and err == ""
    probs = np.array([[float(v) for v in row[2::2]] for row in table[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)  # top-3 of 3 classes: all of it


def test_top_k_is_capped_at_the_number_of_classes(exported):
    layout, _ = exported
    rows, _ = predict(layout.onnx, [layout.prepared / "test" / "square"], top_k=10)
    assert all(sorted(label for label, _ in r["top_k"]) == CLASSES for r in rows)


def test_format_table_and_unknown_format():
    rows = [{"path": "a.png", "top_k": [("cat", 0.9), ("dog", 0.1)]},
            {"path": "longer/b.png", "top_k": [("dog", 0.6), ("cat", 0.4)]}]
    lines = format_rows(rows, "table").splitlines()
    assert lines[0].split() == ["path", "top-1", "top-2"]
    assert lines[1].split() == ["a.png", "cat", "(0.900)", "dog", "(0.100)"]
    assert lines[1].index("cat") == lines[2].index("dog")  # columns aligned
    with pytest.raises(PredictError, match="--format must be one of table, csv, json"):
        format_rows(rows, "xml")  # type: ignore[arg-type]


def test_bad_options_and_bad_model_are_clear_errors(exported, tmp_path):
    layout, _ = exported
    with pytest.raises(PredictError, match="--top-k must be at least 1"):
        predict(layout.onnx, [layout.prepared], top_k=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PredictError, match="no image files in"):
        predict(layout.onnx, [empty])
    with pytest.raises(OnnxModelError, match=r"model\.pt: not"):
        predict(layout.model, [layout.prepared / "test"])
