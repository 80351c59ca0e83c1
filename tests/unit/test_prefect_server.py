"""graft.prefect_server: the stages of one pipeline run share one temporary Prefect server, which
stops by itself once no stage has used it for GRAFT_PREFECT_IDLE_S seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from graft.prefect_server import answers

CHILD = """
import sys, time
from graft.prefect_server import shared_server
with shared_server() as url:
    print(url, flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _stage(env: dict[str, str], hold_s: float = 0.0) -> subprocess.Popen:
    """What a `graft <stage>` process does: take a lease on the shared server, work, leave."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(hold_s)], env=env,
                            stdout=subprocess.PIPE, text=True)



def test_stages_share_one_server_that_stops_when_idle(tmp_path):
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "GRAFT_PREFECT_IDLE_S": "3"}
    env.pop("PREFECT_API_URL", None)
    first = _stage(env, hold_s=60)
    try:
        url = first.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and answers(url)
        second = _stage(env)  # the next stage while the first still runs: the same server
        assert second.stdout.readline().strip() == url and second.wait(timeout=120) == 0
        assert json.loads((home / "graft-server.json").read_text())["url"] == url
        assert answers(url)  # the first stage's lease keeps it up past the idle time
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 60
    while answers(url) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not answers(url), "the idle server was not stopped"
    assert not (home / "graft-server.json").exists()
    assert not list((home / "graft-leases").iterdir())  # a killed stage's lease is cleared too


def test_a_users_own_server_is_used_as_it_is(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": "http://h:1/api"}
    child = _stage(env)
    assert child.stdout.readline().strip() == "None" and child.wait(timeout=120) == 0
    assert not (tmp_path / "graft-server.json").exists()


def test_the_server_stops_when_its_home_is_removed(tmp_path):
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "GRAFT_PREFECT_IDLE_S": "600"}
    env.pop("PREFECT_API_URL", None)
    child = _stage(env)
    url = child.stdout.readline().strip()
    assert child.wait(timeout=120) == 0 and answers(url)
    shutil.rmtree(home)  # e.g. a benchmark's scratch folder, cleaned up
    deadline = time.monotonic() + 60
    while answers(url) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not answers(url), "an orphaned server outlived its home"


def test_a_bad_idle_setting_falls_back_instead_of_failing(monkeypatch):
    from graft.prefect_server import _idle_s

    monkeypatch.setenv("GRAFT_PREFECT_IDLE_S", "abc")
    assert _idle_s() == 60.0
    monkeypatch.setenv("GRAFT_PREFECT_IDLE_S", "-5")
    assert _idle_s() == 0.0
