"""graft.prefect_server: the stages of one pipeline run share one temporary Prefect server, which
stops by itself once no stage has used it for GRAFT_PREFECT_IDLE_S seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

CHILD = """
from graft.prefect_server import shared_server
with shared_server() as url:
    print(url)
"""


def _stage(env: dict[str, str]) -> str:
    """What a `graft <stage>` process does: take a lease on the shared server, then leave."""
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=180, check=True)
    return proc.stdout.strip()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_stages_share_one_server_that_stops_when_idle(tmp_path):
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "GRAFT_PREFECT_IDLE_S": "8"}
    env.pop("PREFECT_API_URL", None)
    first = _stage(env)
    assert first.startswith("http://127.0.0.1:") and _answers(first)
    second = _stage(env)  # the next stage, a moment later: the same server, no new start-up
    assert second == first
    assert json.loads((home / "graft-server.json").read_text())["url"] == first
    deadline = time.monotonic() + 60
    while _answers(first) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _answers(first), "the idle server was not stopped"
    assert not (home / "graft-server.json").exists()
    assert not list((home / "graft-leases").iterdir())  # every stage gave its lease back


def test_a_users_own_server_is_used_as_it_is(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://h:1/api"}
    assert _stage(env) == "None"  # shared_server yields None: nothing started
    assert not (tmp_path / "graft-server.json").exists()
