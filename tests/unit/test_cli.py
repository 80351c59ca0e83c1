"""The `graft` command line (graft.cli): exit codes and what it prints, for the commands that are
more than a stage (`graft rank`, `graft models`, `graft rollback`; `graft bench`:
tests/unit/deploy/test_bench.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.core.layout import Layout
from graft.data.manifest import read_manifest, write_manifest
from graft.evaluation.transferability import rank_backbones
from graft.lifecycle import registry
from tests.fixtures import BIN, finetune_params, make_version


@pytest.mark.usefixtures("one_thread")
def test_graft_rank_scores_every_backbone_and_caches_their_features(tiny_layout: Layout) -> None:
    layout = tiny_layout  # Lite0 features at 32 px cached
    layout.params.write_text(yaml.safe_dump(
        {"features": {"backbone": "efficientnet_lite0", "image_size": 32, "batch_size": 32}}))
    runner = CliRunner()
    result = runner.invoke(app, ["rank", "--root", str(layout.root), "--backbone",
                                 "efficientnet_lite0", "--backbone", "efficientnet_lite1"])
    assert result.exit_code == 0, result.output
    assert "| 1 | efficientnet_lite" in result.output and "best: " in result.output
    saved = json.loads(layout.rank.read_text())
    ranking = saved["ranking"]
    assert sorted(r["backbone"] for r in ranking) == ["efficientnet_lite0", "efficientnet_lite1"]
    assert [r["logme"] for r in ranking] == sorted((r["logme"] for r in ranking), reverse=True)
    assert saved["best"] == ranking[0]["backbone"] and saved["n_train"] == 12
    computed = {r["backbone"]: r["n_computed"] for r in ranking}
    # Lite0's were cached by the features stage; Lite2 is left out to keep the test short
    assert computed == {"efficientnet_lite0": 0, "efficientnet_lite1": 12}
    assert (layout.features / "efficientnet_lite1-32.npz").exists()
    again = rank_backbones(finetune_params(), layout, ["efficientnet_lite1"])
    assert again["ranking"][0]["n_computed"] == 0


def test_rank_needs_two_training_classes(tiny_layout: Layout) -> None:
    layout = tiny_layout
    df = read_manifest(layout.manifest)
    write_manifest(layout.manifest, df[df["label"] == "circle"])
    layout.params.write_text("features: {image_size: 32}\n")
    result = CliRunner().invoke(app, ["rank", "--root", str(layout.root)])
    assert result.exit_code == 1 and "fewer than 2 classes" in result.output


def test_graft_models_and_graft_rollback_commands(tmp_path) -> None:
    models = tmp_path / "models"
    with registry.lock(models):
        for name in ("a", "bb"):
            registry.promote(models, make_version(models, tmp_path, name))
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "--root", str(tmp_path)])
    assert listed.exit_code == 0
    sha = {name: hashlib.sha256(name.encode()).hexdigest()[:12] for name in ("a", "bb")}
    assert listed.output.splitlines() == [  # the sha256 the registry took of each model.pt
        f"* 20260102T000000Z-bb  2026-01-01  accuracy 50.0%  sha256 {sha['bb']}",
        f"  20260101T000000Z-a  2026-01-01  accuracy 50.0%  sha256 {sha['a']}"]
    back = runner.invoke(app, ["rollback", "20260101T000000Z-a", "--root", str(tmp_path)])
    assert back.exit_code == 0 and "champion is now 20260101T000000Z-a" in back.output
    assert (registry.champion_dir(models) / "model.pt").read_text() == "a"
    bad = runner.invoke(app, ["rollback", "zzz", "--root", str(tmp_path)])
    assert bad.exit_code == 1 and "no version 'zzz'" in bad.output


# What a user sees when they get something wrong: one line, no traceback, no Prefect, no torch.

PROBE = """
import sys
from graft.cli import app
try:
    app(sys.argv[1:])
finally:
    heavy = sorted(m for m in ("torch", "prefect", "timm") if m in sys.modules)
    print("imported:" + ",".join(heavy), file=sys.stderr)
"""


def _graft(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", ["finetune", "features"])
def test_a_typo_in_params_is_one_line_before_prefect_or_torch_load(tmp_path, stage) -> None:
    (tmp_path / "params.yaml").write_text("finetune:\n  strategy: linear_prob\n")
    started = time.monotonic()
    proc = _graft([stage, "--root", str(tmp_path)], tmp_path)
    seconds = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and proc.stdout == ""
    assert lines[-1] == "imported:"  # neither torch nor prefect: as fast as Python starts
    assert len(lines) == 2 and lines[0].startswith("error: ") and "linear_prob" in lines[0]
    assert "params.yaml" in lines[0] and "Traceback" not in proc.stderr
    assert seconds < 30  # a loose bound for a loaded CI box; the import check is the real one


def test_a_missing_params_file_names_it(tmp_path) -> None:
    proc = _graft(["validate", "--root", str(tmp_path / "nowhere")], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == (
        f"error: {tmp_path / 'nowhere' / 'params.yaml'}: params file not found")


def test_version_and_plain_help() -> None:
    from graft.core import VERSION

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output == f"graft {VERSION}\n"
    help_text = runner.invoke(app, ["bench", "--help"]).output
    assert "--train " in help_text and "<bool>" not in help_text and "╭" not in help_text
    assert "--verbose" in runner.invoke(app, ["--help"]).output


def test_what_graft_run_did_is_recorded_in_dvc_lock(tmp_path) -> None:
    """`graft run` runs the stages outside DVC; afterwards `dvc status` must not call every
    stage changed (graft.cli._record_in_dvc: `dvc commit`)."""
    from graft.cli import _record_in_dvc

    dvc = str(BIN / "dvc")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    (tmp_path / "params.yaml").write_text("n: 1\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"count": {
        "cmd": "python -c \"open('out.txt', 'w').write('1')\"", "params": ["n"],
        "outs": ["out.txt"]}}}))
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics",
                                                              "false"]):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    (tmp_path / "out.txt").write_text("1")  # what the stage makes, made outside DVC
    _record_in_dvc(tmp_path)
    status = subprocess.run([dvc, "status"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, check=True).stdout
    assert "up to date" in status, status
    assert "out.txt" in (tmp_path / "dvc.lock").read_text()


def test_a_stage_says_what_it_did_in_two_lines(tmp_path, pattern_folder) -> None:
    """Off a terminal (dvc repro, CI): how ingest split the images, then one line naming the
    metrics file; no JSON dump, nothing on stdout."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": {
        "source": "folder", "path": str(pattern_folder), "shots_per_class": None}}))
    proc = _graft(["ingest", "--no-prefect", "--root", str(tmp_path)], tmp_path)
    lines = proc.stderr.strip().splitlines()[:-1]  # the probe's own last line
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert len(lines) == 2, lines
    assert lines[0].startswith("ingest: 36 images, 3 classes → train ")
    assert lines[1].startswith("ingest: done in ") and "metrics/ingest.json" in lines[1]


def test_valid_params_are_checked_without_torch_and_a_stage_imports_only_what_it_needs(
        tmp_path) -> None:
    """Every `graft <stage>` checks the whole params.yaml first: with valid params (a registered
    strategy) that imports no strategy module, hence no torch; seven stages a run pay it."""
    (tmp_path / "params.yaml").write_text("finetune:\n  strategy: ensemble\n")
    proc = _graft(["validate", "--no-prefect", "--root", str(tmp_path)], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "data/prepared" in lines[0]  # past the params check
    assert lines[-1] == "imported:"


def test_the_stage_flows_import_prefect_and_nothing_heavy() -> None:
    probe = ("import sys, graft.flows; print(','.join(sorted(m for m in ('torch', 'timm', "
             "'sklearn', 'graft.lifecycle.retrain') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
