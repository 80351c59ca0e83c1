"""Data that must never be lost (issue 10, items 4–6 and 17): `graft bundle --out` over folders
it did not make, an ingest source inside Graft's own outputs, a retrain's overrides in the
user's params.yaml, and the temporary files of killed runs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import yaml

from graft.core.layout import Layout
from tests.fixtures import (
    assert_user_error,
    graft_cli,
    image_tree,
    ingest_params,
    make_split_project,
    tiny_champion,
    unchanged,
)


def test_bundle_out_never_replaces_what_it_did_not_make(tmp_path):
    layout = Layout(tmp_path / "proj")
    tiny_champion(layout.models, tmp_path)
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "v1.zip").write_bytes(b"an older release")
    for out, rule in ((mine, "not a Graft bundle"), (layout.models, "which Graft's stages write"),
                      (layout.root, "not a Graft bundle"), (mine / "thesis.tex", "not a bundle")):
        with unchanged(tmp_path):
            code, output = graft_cli("bundle", "--root", layout.root, "--out", out)
        assert_user_error(code, output, out, rule)
    # dist/v1.2 is a new name: its zip is dist/v1.2.zip, and dist/v1.zip stays as it was
    code, output = graft_cli("bundle", "--root", layout.root, "--out", dist / "v1.2")
    assert code == 0, output
    assert (dist / "v1.zip").read_bytes() == b"an older release"
    with zipfile.ZipFile(dist / "v1.2.zip") as zf:
        assert "v1.2/model.onnx" in zf.namelist()
    code, output = graft_cli("bundle", "--root", layout.root, "--out", dist / "v1.2")
    assert code == 0, output  # its own earlier bundle is replaced
    (dist / "v1.2" / "notes.md").write_text("the user's notes, added inside the bundle")
    code, output = graft_cli("bundle", "--root", layout.root, "--out", dist / "v1.2")
    assert_user_error(code, output, dist / "v1.2", "notes.md")
    assert (dist / "v1.2" / "notes.md").exists()


def test_an_ingest_source_inside_graft_outputs_is_refused(tmp_path):
    layout = make_split_project(tmp_path / "proj", {"train": 2, "test": 1}, size=16)
    for source, path in (("csv", layout.manifest), ("folder", layout.prepared / "train")):
        layout.params.write_text(yaml.safe_dump(ingest_params(source, path).to_dict()))
        with unchanged(layout.prepared):
            code, out = graft_cli("ingest", "--no-prefect", "--root", layout.root)
        assert_user_error(code, out, path, "lies inside", "which Graft writes")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_killed_runs_are_cleaned_at_the_next_run(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 2, "b": 2})
    layout = Layout(tmp_path / "proj")
    layout.root.mkdir()
    layout.params.write_text(yaml.safe_dump(ingest_params("folder", src).to_dict()))
    dead, alive = _dead_pid(), os.getpid()
    stale = [layout.models / f".model.pt.{dead}-0a1b2c3d.tmp",
             layout.features / f".lite0-32.npz.{dead}-00ff00ff.tmp",
             layout.models / ".model.pt.k2j4h5g6.tmp",  # what earlier versions left
             layout.models / ".export-x1y2z3"]
    kept = [layout.models / f".model.pt.{alive}-0a1b2c3d.tmp",  # a run going on now
            layout.models / "notes.tmp", layout.root / "data" / ".my-notes.abcdefgh.tmp",
            layout.root / "data" / "raw" / ".x.12-ab.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith(".export-"):
            path.mkdir()
            (path / "model.onnx").write_bytes(b"half")
        else:
            path.write_bytes(b"half-written")
    code, out = graft_cli("ingest", "--no-prefect", "--root", layout.root)
    assert code == 0, out
    assert not [p for p in stale if p.exists()] and all(p.exists() for p in kept)


def test_ingest_never_changes_its_input_folder(tmp_path):
    src = image_tree(tmp_path / "src", {"a": 2, "b": 2})
    layout = Layout(tmp_path / "proj")
    layout.root.mkdir()
    layout.params.write_text(yaml.safe_dump(ingest_params("folder", src).to_dict()))
    with unchanged(src):
        for _ in range(2):  # the second run replaces data/prepared, never the source
            code, out = graft_cli("ingest", "--no-prefect", "--root", layout.root)
            assert code == 0, out
