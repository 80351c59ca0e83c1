"""Code and data that must never get in (issue 10, items 1–3): a model file carrying a pickle, a
registry version whose files were replaced, a CSV row naming a file outside the data root; and
their cousins (a manifest row leaving data/prepared, registry records naming other folders)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from graft.core.layout import Layout
from graft.lifecycle import registry
from graft.models.checkpoint import CheckpointError, load_checkpoint
from tests.fixtures import (
    CLASSES,
    assert_user_error,
    constant_checkpoint,
    graft_cli,
    image_tree,
    ingest_params,
    make_split_project,
    make_version,
    tiny_params,
    unchanged,
    write_csv,
    write_image,
)


class _Payload:
    """Unpickling this makes a folder: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _project(tmp_path: Path) -> Layout:
    layout = make_split_project(tmp_path / "proj", {"train": 1, "test": 1}, size=16)
    layout.params.write_text(yaml.safe_dump(tiny_params().to_dict()))
    return layout


def test_a_pickled_model_file_runs_nothing(tmp_path):
    layout = _project(tmp_path)
    layout.models.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "code-ran"
    for legacy in (False, True):  # torch's zip format and its older raw pickle
        torch.save({"state_dict": {}, "payload": _Payload(marker)}, layout.model,
                   _use_new_zipfile_serialization=not legacy)
        code, out = graft_cli("evaluate", "--no-prefect", "--root", layout.root)
        assert_user_error(code, out, layout.model, "pickle")
        assert not marker.exists()


def test_a_truncated_or_foreign_model_file_is_refused_by_name(tmp_path):
    good = constant_checkpoint(tmp_path / "good.pt", CLASSES, 0)
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"",
             "text.pt": b"just some text, not weights"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}: not a Graft checkpoint"):
            load_checkpoint(tmp_path / name)
    from safetensors.torch import save_file  # a real safetensors file, but not Graft's

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign\.pt: a safetensors file without Graft"):
        load_checkpoint(tmp_path / "foreign.pt")
    model, meta = load_checkpoint(good)  # the real one still loads, as data
    assert meta["class_names"] == CLASSES and not model.training


def test_rollback_refuses_a_history_version_whose_files_were_replaced(tmp_path):
    models = Layout(tmp_path).models
    with registry.lock(models):
        old = registry.promote(models, make_version(models, tmp_path, "a"))
        new = registry.promote(models, make_version(models, tmp_path, "bb"))
    (models / "history" / old / "model.pt").write_text("someone else's weights")
    code, out = graft_cli("rollback", old, "--root", tmp_path)
    assert_user_error(code, out, models / "history" / old / "model.pt", "sha256")
    assert registry.champion(models).info["version"] == new  # nothing was restored
    # the champion's own files are checked before it is bundled or scored
    (models / "champion" / "model.pt").write_text("tampered")
    with pytest.raises(registry.RegistryError, match=r"champion/model\.pt: sha256 differs"):
        registry.verify(models / "champion")


def test_registry_records_cannot_name_folders_outside_it(tmp_path):
    models = Layout(tmp_path).models
    with registry.lock(models):
        registry.promote(models, make_version(models, tmp_path, "a"))
    victim = tmp_path / "my-folder"
    victim.mkdir()
    (models / ".promoting").write_text(json.dumps({"incoming": "../my-folder", "retired": None}))
    code, out = graft_cli("rollback", "--root", tmp_path)
    assert_user_error(code, out, models / ".promoting", "outside the registry")
    assert victim.is_dir()
    (models / ".promoting").unlink()
    info = models / "champion" / "champion.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "version": "../../etc"}))
    with pytest.raises(registry.RegistryError, match="no valid version name"):
        registry.read_info(models / "champion")


def test_a_csv_row_cannot_pull_in_a_file_outside_the_data_root(tmp_path):
    data = image_tree(tmp_path / "mine", {"a": 2, "b": 2})
    outside = write_image(tmp_path / "secret.png")  # an image, but not under the data root
    (data / "a" / "notes.txt").write_text("not an image")
    (data / "b" / "link.png").symlink_to(outside)
    rows = [("a/" + p.name, "a") for p in sorted((data / "a").glob("*.png"))]
    rows += [("/etc/hostname", "a"), ("../secret.png", "b"), ("a/notes.txt", "a"),
             ("b/link.png", "b")]
    csv_path = write_csv(data / "list.csv", rows, ("path", "label"))
    layout = Layout(tmp_path / "proj")
    layout.root.mkdir()
    layout.params.write_text(yaml.safe_dump(ingest_params("csv", csv_path).to_dict()))
    with unchanged(data), unchanged(tmp_path / "secret.png"):
        code, out = graft_cli("ingest", "--no-prefect", "--root", layout.root)
    assert_user_error(code, out, "ingest refused 4 entries", "'/etc/hostname'",
                      "'../secret.png'", "'a/notes.txt' is not an image file",
                      "'b/link.png' resolves to", "outside the data root")
    assert not layout.prepared.exists()  # refused before a byte was copied
    # naming a wider data root (ingest.root) lets the outside image in, and only images
    rows = rows[:2] + [("../secret.png", "b"), ("b/link.png", "b")]
    write_csv(data / "list.csv", rows, ("path", "label"))
    p = ingest_params("csv", csv_path, ingest={"root": str(tmp_path)})
    layout.params.write_text(yaml.safe_dump(p.to_dict()))
    code, out = graft_cli("ingest", "--no-prefect", "--root", layout.root)
    assert code == 0, out


def test_a_manifest_row_cannot_leave_data_prepared(tmp_path):
    layout = _project(tmp_path)
    text = layout.manifest.read_text().splitlines()
    first = text[1].split(",")
    text[1] = ",".join(["../../../etc/hostname", *first[1:]])
    layout.manifest.write_text("\n".join(text) + "\n")
    code, out = graft_cli("validate", "--no-prefect", "--root", layout.root)
    assert_user_error(code, out, layout.manifest, "leave", "../../../etc/hostname")


def test_a_damaged_or_pickled_feature_store_is_refused_by_name(tmp_path):
    import numpy as np

    from graft.embeddings.store import FeaturesError, read_store

    cut = tmp_path / "cut.npz"
    np.savez(cut, sha256=np.array(["a"]), features=np.zeros((1, 4), np.float32))
    cut.write_bytes(cut.read_bytes()[:100])
    objects = tmp_path / "objects.npz"  # an object array: loading it would unpickle
    np.savez(objects, sha256=np.array(["a"]), features=np.array([_Payload(tmp_path / "x")]))
    for path in (cut, objects):
        with pytest.raises(FeaturesError, match=rf"{path.name}: not a readable feature store"):
            read_store(path)
    assert not (tmp_path / "x").exists()
