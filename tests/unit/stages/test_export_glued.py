"""The export stage for a frozen pretrained backbone: every file is the embedding store's graph
(or its kept INT8 / FP16 copy) with the head glued on, scored from cached embeddings and checked
on a fixed sample; a new head reuses the copies; a kept copy that was changed is rebuilt, and
embeddings that no longer match their graph stop the export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, read_manifest
from graft.deploy.onnx_model import OnnxClassifier
from graft.embeddings.store import read_store, store_file, write_store
from graft.models.backbones import create_model, get_spec
from graft.models.checkpoint import load_checkpoint, save_checkpoint
from graft.models.heads import head_logits
from graft.stages import export, features
from tests.fixtures import (
    BACKBONE,
    CLASSES,
    EXPORT_SIZE,
    REPO,
    export_params,
    make_export_project,
)


def frozen_checkpoint(layout: Layout, seed: int) -> torch.nn.Module:
    """models/model.pt: pretrained Lite0 (the store's network) with a random linear head, saved
    as a feature strategy saves it."""
    torch.manual_seed(seed)
    model = create_model(BACKBONE, len(CLASSES), pretrained=True)
    save_checkpoint(layout.model, model, BACKBONE, CLASSES,
                    get_spec(BACKBONE).preprocessing(EXPORT_SIZE), strategy="linear_probe",
                    frozen_backbone=True)
    return model


@pytest.fixture(scope="module")
def glued_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = make_export_project(tmp_path_factory.mktemp("glued"), per_class=3)
    features.run(export_params(), layout)  # the store and its graph at 64 px
    frozen_checkpoint(layout, seed=0)
    export.run(export_params(), layout)  # builds the INT8 and FP16 copies once
    return layout.root


@pytest.fixture()
def glued(glued_base: Path, tmp_path: Path) -> Layout:
    shutil.copytree(glued_base, tmp_path / "project")
    return Layout(tmp_path / "project")


def test_each_file_is_the_store_graph_with_the_head_and_scores_what_it_computes(glued):
    metrics = json.loads(glued.metrics("export").read_text())
    assert metrics["scored_from"] == "cached embeddings"
    graph = store_file(glued, BACKBONE, EXPORT_SIZE).with_suffix(".onnx")
    body = {i.name: i.raw_data for i in onnx.load(str(graph)).graph.initializer}
    shipped = {i.name: i.raw_data for i in onnx.load(str(glued.onnx)).graph.initializer}
    assert all(shipped.get(name) == raw for name, raw in body.items())  # its weights, as they are

    model, meta = load_checkpoint(glued.model)
    manifest = read_manifest(glued.manifest)
    rows = manifest[manifest["split"] == "test"]
    x = meta["preprocessing"].load(absolute_paths(rows, glued.manifest))
    stores = {"fp32": store_file(glued, BACKBONE, EXPORT_SIZE)} | {
        name: (glued.root / metrics[name]["backbone_graph"]).with_suffix(".npz")
        for name in ("int8", "fp16")}
    for name in ("fp32", "int8", "fp16"):
        cached = read_store(stores[name])
        expected = head_logits(model.classifier, np.stack([cached[s] for s in rows["sha256"]]))
        got = OnnxClassifier(glued.onnx_variant(name), ["CPUExecutionProvider"]).logits(x)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=name)


def test_a_new_head_reuses_the_copies_and_runs_only_the_parity_sample(glued, monkeypatch):
    kept = {p.name: p.stat().st_mtime_ns for p in glued.variants.glob("*.npz")}
    frozen_checkpoint(glued, seed=1)  # what a finetune.* change does: a new head

    def refuse(*args, **kwargs):
        raise AssertionError("a kept copy was rebuilt")

    monkeypatch.setattr(export, "quantize_int8", refuse)
    monkeypatch.setattr(export, "to_fp16", refuse)
    metrics = export.run(export_params(parity_images=2), glued)
    assert metrics["n_parity_images"] == 2
    for name in ("int8", "fp16"):
        assert metrics[name]["backbone_graph_reused"] is True
        assert metrics[name]["parity"]["n_parity_images"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in glued.variants.glob("*.npz")} == kept
    assert OnnxClassifier(glued.onnx_int8).metadata["export_id"] == \
        OnnxClassifier(glued.onnx).metadata["export_id"]


def test_a_changed_quantisation_setting_builds_a_new_int8_copy(glued):
    metrics = export.run(export_params(per_channel=False, fp16=False, min_int8_agreement=0.0),
                         glued)
    assert metrics["int8"]["backbone_graph_reused"] is False
    assert metrics["int8"]["per_channel"] is False
    assert len(list(glued.variants.glob("*.int8-*.onnx"))) == 2  # the other one is kept


def test_a_replaced_kept_copy_is_rebuilt_not_shipped(glued):
    metrics = json.loads(glued.metrics("export").read_text())
    kept = glued.root / metrics["int8"]["backbone_graph"]
    shutil.copy(glued.onnx_fp16, kept)  # a valid graph, but not the one recorded
    metrics = export.run(export_params(), glued)
    assert metrics["int8"]["backbone_graph_reused"] is False
    assert metrics["int8"]["parity"]["top1_flips"] == 0


def test_a_kept_copy_that_is_a_symlink_is_rebuilt_and_its_target_left_alone(glued, tmp_path):
    metrics = json.loads(glued.metrics("export").read_text())
    kept = glued.root / metrics["int8"]["backbone_graph"]
    outside = tmp_path / "outside.onnx"
    kept.rename(outside)  # the very bytes recorded, but a file outside the project
    os.utime(outside, (1, 1))
    kept.symlink_to(outside)
    metrics = export.run(export_params(), glued)
    assert metrics["int8"]["backbone_graph_reused"] is False
    assert kept.is_file() and not kept.is_symlink()
    assert outside.stat().st_mtime == 1  # neither touched nor written


def test_embeddings_that_do_not_match_their_graph_stop_the_export(glued):
    metrics = json.loads(glued.metrics("export").read_text())
    kept = (glued.root / metrics["int8"]["backbone_graph"]).with_suffix(".npz")
    before = glued.onnx.read_bytes()
    write_store(kept, {sha: 3 * v + 1 for sha, v in read_store(kept).items()})
    with pytest.raises(export.ExportError, match=r"model\.int8\.onnx: parity check against "
                                                 r"the head on the embeddings in data/variants/"
                                                 r".*\.int8-.*\.npz failed"):
        export.run(export_params(), glued)
    assert glued.onnx.read_bytes() == before  # nothing published


def test_the_int8_calibration_benchmark_scores_a_setting_on_the_project(glued):
    """benchmarks/int8_calibration.py: what it prints for the export's own setting is what the
    export stage measured."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/int8_calibration.py"),
                           "--root", str(glued.root), "minmax"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    metrics = json.loads(glued.metrics("export").read_text())
    assert line["setting"] == "minmax"
    assert line["accuracy"] == metrics["int8"]["accuracy"]
    assert line["top1_agreement"] == metrics["int8"]["top1_agreement"]
