"""The pipeline through the real DVC and the real Prefect, on a tiny image folder at 64 px."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from graft.data.manifest import read_manifest
from tests.fixtures import BIN, copy_project, make_pattern_images, pipeline_params, sh


def ran_stages(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture()
def project(tmp_path: Path, prefect_server: str):
    images = make_pattern_images(tmp_path / "user-images", per_class=14)
    root = copy_project(tmp_path / "project")
    (root / "params.yaml").write_text(yaml.safe_dump(pipeline_params(images)))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_API_URL": prefect_server,
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    sh(["git", "init", "-q"], root, env)
    sh([str(BIN / "dvc"), "init", "-q"], root, env)
    sh([str(BIN / "dvc"), "config", "core.analytics", "false"], root, env)
    return root, images, env


def test_dvc_repro_runs_seven_stages_then_only_what_changed(project):
    root, images, env = project
    dvc = str(BIN / "dvc")

    first = sh([dvc, "repro"], root, env)
    assert ran_stages(first) == {"ingest", "validate", "features", "audit", "finetune", "evaluate",
                                 "export"}
    evaluate = json.loads((root / "metrics/evaluate.json").read_text())
    assert evaluate["accuracy"] > 0.6  # three easy classes; chance is 1/3
    assert (root / "models/model.onnx").stat().st_size > 1_000_000
    export = json.loads((root / "metrics/export.json").read_text())
    assert export["max_abs_diff"] <= 1e-4

    assert ran_stages(sh([dvc, "repro"], root, env)) == set()  # nothing is stale

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["c_grid"] = [0.5]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert ran_stages(sh([dvc, "repro"], root, env)) == {"finetune", "evaluate", "export"}

    shown = sh([dvc, "metrics", "show"], root, env)  # the headline files only, readable
    assert "metrics/scores.json" in shown and "metrics/onnx.json" in shown
    assert "accuracy" in shown and max(map(len, shown.splitlines())) <= 100, shown
    sh([dvc, "plots", "show", "--out", str(root / "plots-html")], root, env)
    assert (root / "plots/training.png").stat().st_size > 1000

    # New images: the features store computes embeddings for new content alone.
    before = set(read_manifest(root / "data/prepared/manifest.csv")["sha256"])
    make_pattern_images(images, per_class=5, seed=99, classes=("circle",), prefix="new-")
    params["ingest"]["shots_per_class"] = None  # every image, so the new ones are surely in
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    sh([dvc, "repro"], root, env)
    after = set(read_manifest(root / "data/prepared/manifest.csv")["sha256"])
    features = json.loads((root / "metrics/features.json").read_text())
    assert features["n_images"] == len(after)
    assert features["n_computed"] == len(after - before) > 0


def test_validation_failure_stops_the_pipeline(project):
    root, images, env = project
    (images / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["shots_per_class"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    assert "broken.png" in proc.stdout + proc.stderr
    assert not (root / "models" / "model.pt").exists()
    assert (images / "circle" / "broken.png").exists()  # reported, never deleted


def test_pipeline_flow_in_ephemeral_mode(tmp_path: Path):
    """`graft run`: the seven stage flows as subflows of one flow, with no Prefect server."""
    images = make_pattern_images(tmp_path / "images", per_class=10)
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(pipeline_params(images)))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    out = sh([str(BIN / "graft"), "run", "--root", str(root)], root, env)
    assert "model accuracy" in out and "baseline small_cnn" in out
    for stage in ("ingest", "validate", "features", "audit", "finetune", "evaluate", "export"):
        assert (root / "metrics" / f"{stage}.json").exists(), stage
