"""The retrain loop through a real Prefect server, a served deployment and DVC, at 32 px."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from graft.core.config import params_from_dict
from graft.lifecycle import registry
from graft.lifecycle.registry import champion_dir, read_info, versions
from graft.models.checkpoint import load_checkpoint
from tests.fixtures import (
    BIN,
    HOLD_LOCK,
    REPO,
    copy_project,
    fp32_only_export,
    make_pattern_images,
    pipeline_params,
    sh,
)


@pytest.fixture()
def retrain_project(tmp_path: Path, prefect_server: str):
    images = make_pattern_images(tmp_path / "user-images", per_class=12, size=32)
    root = copy_project(tmp_path / "project")
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    params = pipeline_params(images)
    params["evaluate"] = {"bootstrap": 50, "cnn_epochs": 1}
    params["retrain"] = {"min_gain": 0.0, "max_class_drop": 0.5}
    params = params_from_dict(params).to_dict()  # every key stated, as DVC's params: need
    fp32_only_export(root, params)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
           "PREFECT_API_URL": prefect_server, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh(["git", "init", "-q"], root, env)
    sh([str(BIN / "dvc"), "init", "-q"], root, env)
    sh([str(BIN / "dvc"), "config", "core.analytics", "false"], root, env)
    return root, images, env


def run_deployment(root: Path, env: dict) -> str:
    """Trigger graft-retrain by hand and wait for it; the `prefect deployment run` output."""
    proc = subprocess.run([str(BIN / "prefect"), "deployment", "run", "retrain/graft-retrain",
                           "--watch", "--watch-timeout", "540"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (root / "serve.log").read_text()[-4000:]
    return proc.stdout


@contextlib.contextmanager
def serving(root: Path, env: dict):
    """`python flows/retrain.py .`: registers graft-retrain and runs what is triggered."""
    log = open(root / "serve.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(BIN / "python"), "flows/retrain.py", "."], cwd=root, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(BIN / "prefect"), "deployment", "inspect",
                              "retrain/graft-retrain"], cwd=root, env=env,
                             capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (root / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def artifacts(api: str, key: str) -> list[dict]:
    """Every version of an artifact, newest first, straight from the REST API (the CLI's
    `prefect artifact inspect` sends null filters that this server version rejects with 422)."""
    body = json.dumps({"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}).encode()
    request = urllib.request.Request(f"{api}/artifacts/filter", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def report(root: Path) -> dict:
    return json.loads((root / "reports" / "retrain.json").read_text())


KILL_AT_PROMOTE = textwrap.dedent("""
    import os, signal, sys
    from graft.retrain_flow import retrain
    from graft.lifecycle import registry
    def die(*args, **kwargs):  # the process dies between training and promotion
        os.kill(os.getpid(), signal.SIGKILL)
    registry.promote = die
    retrain(sys.argv[1])
""")


# ~2.7 min on an idle 2-core machine: two pipeline runs and four retrain runs. In the default
# suite because it is what proves the scheduled deployment works.
def test_scheduled_deployment_promotes_skips_and_survives_a_crash(retrain_project):
    root, images, env = retrain_project
    prefect = str(BIN / "prefect")
    with serving(root, env):
        deployment = sh([prefect, "deployment", "inspect", "retrain/graft-retrain"], root, env)
        assert "0 3 * * *" in deployment

        # 1. First run: no champion yet, so the challenger is promoted.
        assert "COMPLETED" in run_deployment(root, env).upper()
        first = report(root)
        model_mtime = (root / "models" / "model.pt").stat().st_mtime_ns

        # 2. No new data: nothing trains.
        assert "COMPLETED" in run_deployment(root, env).upper()
        assert report(root)["status"] == "no change"

    assert first["status"] == "promoted" and "no champion yet" in first["reasons"][0]
    champion = champion_dir(root / "models")
    assert read_info(champion)["version"] == first["promoted_version"]
    assert (champion / "model.onnx").exists() and (champion / "testset").is_dir()
    markdowns = [a["data"] for a in artifacts(env["PREFECT_API_URL"], "graft-retrain")]
    assert markdowns[0].startswith("# Graft retrain: no change")
    assert "Champion vs challenger" in markdowns[1] and "no champion yet" in markdowns[1]
    table = artifacts(env["PREFECT_API_URL"], "graft-retrain-scores")[0]
    assert table["type"] == "table" and "accuracy" in json.dumps(table["data"])

    assert (root / "models" / "model.pt").stat().st_mtime_ns == model_mtime
    assert "Running stage 'finetune'" not in (root / "reports/retrain-dvc.log").read_text()

    # 3. New images, then the process dies between training and promotion.
    make_pattern_images(images, per_class=4, size=32, seed=7)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["shots_per_class"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([str(BIN / "python"), "-c", KILL_AT_PROMOTE, str(root)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (root / "models" / "model.pt").stat().st_mtime_ns != model_mtime  # it did train
    champion = champion_dir(root / "models")
    assert read_info(champion)["version"] == first["promoted_version"]
    model, meta = load_checkpoint(champion / "model.pt")
    assert meta["class_names"] == ["circle", "square", "stripes"]

    # 4. The next run finds the lock free, the challenger already built, and runs the gate.
    out = sh([str(BIN / "graft"), "retrain", "--root", str(root)], root, env)
    last = report(root)
    assert last["status"] in ("promoted", "kept champion") and f"retrain: {last['status']}" in out
    assert last["champion_score"] is not None and last["reasons"][-1] in (
        "promote the challenger", "keep the champion")
    assert len(versions(root / "models")) == (2 if last["status"] == "promoted" else 1)


def fake_champion(root: Path) -> str:
    """A champion trained on exactly the current manifest (no weights needed to skip training)."""
    models = root / "models"
    info = {"version": "20260101T000000Z-00000000", "created": "2026-01-01T00:00:00+00:00",
            "accuracy": 0.9, "model_sha256": "0" * 64}
    with registry.lock(models):
        registry.promote(models, registry.stage(
            models, {"manifest.csv": root / "data/prepared/manifest.csv"}, info))
    return info["version"]


def test_no_new_data_means_no_training(retrain_project):
    root, _, env = retrain_project
    sh([str(BIN / "dvc"), "repro", "ingest"], root, env)
    version = fake_champion(root)
    out = sh([str(BIN / "graft"), "retrain", "--root", str(root)], root, env)
    assert "retrain: no change" in out
    result = report(root)
    assert result["status"] == "no change" and result["champion_version"] == version
    assert result["change"]["summary"] == "no new or changed images"
    assert not (root / "models" / "model.pt").exists() and not (root / "dvc.lock").read_text() \
        .count("finetune")
    assert "# Graft retrain: no change" in (root / "reports" / "retrain.md").read_text()


def test_a_second_run_exits_clearly_while_one_holds_the_lock(retrain_project):
    root, _, env = retrain_project
    holder = subprocess.Popen([str(BIN / "python"), "-c", HOLD_LOCK, str(root / "models"), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([str(BIN / "graft"), "retrain", "--root", str(root)], cwd=root,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1
        assert f"models/.lock: held by pid {holder.pid}" in proc.stderr
        assert "another retrain or rollback is running" in proc.stderr
        assert not (root / "data").exists()  # it stopped before ingest
    finally:
        holder.kill()
        holder.wait()
