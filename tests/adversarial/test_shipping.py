"""Models that must never ship unchecked (issue 10, items 7–9): the gate and the promotion see
the same bytes, an export's ONNX files are used only as one whole set, and what ships is the
registry's champion, never the workspace's last export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from graft.core.layout import Layout
from graft.deploy import publish
from graft.deploy.gates import check_parity
from graft.deploy.onnx_export import ExportError
from graft.deploy.publish import MixedSetError, check_set, publish_set, set_files
from graft.lifecycle import gate, registry
from tests.fixtures import (
    assert_user_error,
    graft_cli,
    make_split_project,
    onnx_set,
    tiny_champion,
    tiny_onnx,
    tiny_params,
    write_image,
)


def _project(tmp_path: Path, weights: bytes = b"weights A") -> Layout:
    """A manifest with a test image, params.yaml, and an exported workspace model (a stand-in
    model.pt and its ONNX set): what `graft promote` gates."""
    layout = make_split_project(tmp_path / "proj", {"train": 1, "test": 1}, size=16)
    layout.params.write_text(yaml.safe_dump(tiny_params().to_dict()))
    onnx_set(layout.models, weights)
    return layout


def test_what_is_promoted_is_exactly_what_was_scored(tmp_path, monkeypatch):
    layout = _project(tmp_path)
    scored = []

    def concurrent_finetune(model_path, images, batch_size=32):
        scored.append(Path(model_path).read_bytes())
        layout.model.write_bytes(b"weights B, never scored")  # swapped in during the gate
        return gate.Score(accuracy=1.0, recall={}, n=1)

    monkeypatch.setattr(gate, "score_checkpoint", concurrent_finetune)
    code, out = graft_cli("promote", "--root", layout.root)
    assert code == 0, out
    champion = registry.champion(layout.models)
    assert scored == [b"weights A"] and champion.model.read_bytes() == b"weights A"
    assert champion.info["files"]["model.pt"] == hashlib.sha256(b"weights A").hexdigest()


def test_a_copy_changed_after_scoring_is_never_promoted(tmp_path, monkeypatch):
    layout = _project(tmp_path)

    def tamper(model_path, images, batch_size=32):
        Path(model_path).write_bytes(b"changed after the gate")  # the staged copy itself
        return gate.Score(accuracy=1.0, recall={}, n=1)

    monkeypatch.setattr(gate, "score_checkpoint", tamper)
    code, out = graft_cli("promote", "--root", layout.root)
    assert_user_error(code, out, "model.pt: changed after it was scored")
    assert registry.champion(layout.models) is None


def test_a_mixed_onnx_set_is_never_used(tmp_path, monkeypatch):
    models = tmp_path / "models"
    onnx_set(models, b"A", export_id="old", variants=("fp32", "int8", "fp16"))
    new = onnx_set(tmp_path / "next", b"A", export_id="new", variants=("fp32", "int8"))

    def killed(src, dst):  # the run dies before model.onnx, the last rename
        if Path(dst).name == "model.onnx":
            raise KeyboardInterrupt
        replace(src, dst)

    replace = publish.os.replace
    monkeypatch.setattr(publish.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        publish_set(new, [models / "model.fp16.onnx"], models)
    monkeypatch.undo()
    with pytest.raises(MixedSetError, match=r"model\.int8\.onnx: not from the same export"):
        check_set(set_files(models))
    image = write_image(tmp_path / "x.png")
    for model in ("model.onnx", "model.int8.onnx"):
        code, out = graft_cli("predict", image, "--model", models / model)
        assert_user_error(code, out, models / "model.int8.onnx", "graft.export_id differs")


def test_an_onnx_set_from_another_checkpoint_is_not_promoted(tmp_path):
    layout = _project(tmp_path)
    layout.model.write_bytes(b"weights retrained after the export")
    code, out = graft_cli("promote", "--root", layout.root)
    assert_user_error(code, out, layout.onnx, "exported from another checkpoint")
    assert registry.champion(layout.models) is None
    assert not list(layout.models.glob(".champion.tmp-*"))  # the staged copy is gone too


def test_bundle_and_predict_ship_the_champion_not_the_workspace(tmp_path):
    layout = _project(tmp_path)  # exported, never promoted
    image = write_image(tmp_path / "x.png")
    for args in (("bundle", "--out", tmp_path / "dist"), ("predict", image)):
        code, out = graft_cli(*args, "--root", layout.root)
        assert_user_error(code, out, "no champion yet", "graft promote")
    assert not (tmp_path / "dist").exists()
    tiny_champion(layout.models, tmp_path, class_names=["champ0", "champ1", "champ2"])
    code, out = graft_cli("predict", image, "--root", layout.root, "--format", "json")
    assert code == 0, out
    assert json.loads(out)[0]["top_k"][0]["label"].startswith("champ")
    code, out = graft_cli("bundle", "--out", tmp_path / "dist", "--root", layout.root)
    assert code == 0, out
    labels = json.loads((tmp_path / "dist" / "labels.json").read_text())
    assert labels == ["champ0", "champ1", "champ2"]


def test_a_failed_export_says_precisely_what_was_kept():
    reference, exported = np.zeros((2, 3)), np.ones((2, 3)) * [0, 0, 1]
    with pytest.raises(ExportError) as err:
        check_parity(reference, exported, 1e-4, Path("models/model.onnx"), "torch")
    message = str(err.value)
    assert "nothing was published" in message and "dvc repro" in message
    assert "models/champion/" in message and "was kept" not in message


def test_a_tampered_onnx_file_of_the_champion_is_not_bundled(tmp_path):
    layout = Layout(tmp_path / "proj")
    champion = tiny_champion(layout.models, tmp_path)
    tiny_onnx(champion / "model.int8.onnx", export_id="e1",  # same metadata, other weights
              source_sha256=hashlib.sha256(b"champion").hexdigest(), n_classes=3, size=8,
              mean=[0.4, 0.5, 0.5])
    code, out = graft_cli("bundle", "--out", tmp_path / "dist", "--root", layout.root)
    assert_user_error(code, out, champion / "model.int8.onnx", "sha256")
    assert not (tmp_path / "dist").exists()
