"""The Prefect CLI against a real server of Graft's pinned Prefect: the commands the README gives
(they once failed with 422s when prefect's client and server disagreed), and its deployment path."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import BIN, REPO

FLOW = """
from prefect import flow
from prefect.artifacts import create_markdown_artifact

@flow(name="graft-cli-check")
def check():
    create_markdown_artifact(markdown="# ok", key="graft-cli-check")

check()
"""


@pytest.fixture()
def prefect(prefect_server: str, tmp_path: Path):
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PATH": f"{BIN}:{os.environ['PATH']}",
           "PREFECT_CLI_WRAP_LINES": "false", "COLUMNS": "200"}

    def run(*args: str, cwd: Path = tmp_path) -> str:
        proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=180)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"prefect {' '.join(args)} exited {proc.returncode}:\n{out}"
        # A status code, not the digits: run ids are UUIDs, whose hex can hold "422".
        assert not re.search(r"\b422\b", out) and "Unprocessable" not in out, out
        return out

    subprocess.run([sys.executable, "-c", FLOW], env=env, check=True, timeout=180,
                   capture_output=True)
    return run, tmp_path


def test_the_readme_commands_answer(prefect):
    run, _ = prefect
    assert "graft-cli-check" in run("flow-run", "ls")
    assert "graft-cli-check" in run("artifact", "ls")
    assert "# ok" in run("artifact", "inspect", "graft-cli-check")
    run("deployment", "ls")
    run("work-pool", "ls")


def test_the_retrain_deployment_is_created(prefect):
    run, tmp = prefect
    project = tmp / "project"
    project.mkdir()
    shutil.copy(REPO / "prefect.yaml", project)
    shutil.copytree(REPO / "flows", project / "flows")
    run("work-pool", "create", "graft", "--type", "process")
    assert "graft" in run("work-pool", "ls")
    run("deploy", "--all", cwd=project)
    assert "retrain/graft-retrain" in run("deployment", "ls")
