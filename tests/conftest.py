"""The pytest fixtures shared by several test modules; what they build comes from tests.fixtures.

- `pattern_folder`: a tiny synthetic image folder;
- `prefect_server`: a real Prefect server on 127.0.0.1 (session);
- `dask_cluster`: a real `dask scheduler` and two `dask worker` processes on 127.0.0.1 reporting
  to that server (session); `prefect_api`: this process's flows report to it too;
- `one_thread`: one torch intra-op thread for a module (`pytestmark = usefixtures(...)`);
- `tiny_base` / `tiny_layout`: the tiny finetune project (3 classes, 4 train + 3 val images per
  class, Lite0 embeddings at 32 px cached), built once per module, copied fresh for each test;
- `exported`: the tiny export project after one export stage run, once per module.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from graft.core.device import torch_threads
from graft.core.layout import Layout
from tests.dask_processes import DaskProcesses
from tests.fixtures import (
    BIN,
    copy_stage_outputs,
    export_params,
    finetune_params,
    free_port,
    make_export_project,
    make_pattern_images,
    make_split_project,
)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture()
def pattern_folder(tmp_path: Path) -> Path:
    return make_pattern_images(tmp_path / "images", per_class=12)


@pytest.fixture(scope="module")
def one_thread():
    """Batches of 4 images at 32 px gain nothing from intra-op threads, and on CPUs shared with
    other test processes OpenMP's spin-waits make a step 10× slower: one thread for the module."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/prepared (images + manifest) and data/features, built once for the module."""
    from graft.stages import features

    layout = make_split_project(tmp_path_factory.mktemp("tiny-base"), {"train": 4, "val": 3})
    features.run(finetune_params(), layout)
    return layout.root


@pytest.fixture()
def tiny_layout(tiny_base: Path, tmp_path: Path) -> Layout:
    """A fresh project root per test: its own copy of data/, no models or metrics yet."""
    return copy_stage_outputs(tiny_base, tmp_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, dict]:
    """One export shared by a module's tests (an export of Lite0 costs a few seconds)."""
    from graft.stages import export

    layout = make_export_project(tmp_path_factory.mktemp("project"))
    metrics = export.run(export_params(), layout)
    return layout, metrics


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (home / "server.log").read_text()[-2000:]
            pytest.fail(f"prefect server did not start: {tail}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory,
                 prefect_server: str) -> Iterator[DaskProcesses]:
    """`dask scheduler` + two `dask worker` processes (tests.dask_processes), not waited for: a
    test calls `wait()` once its other fixtures are built, so the workers' imports overlap with
    them. Always stopped after the session."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask"), workers=2,
                            prefect_api=prefect_server, preload="graft.embeddings.cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture()
def prefect_api(prefect_server: str) -> Iterator[str]:
    """This process's flows report to the session's server (Prefect is imported already, so the
    setting goes through its settings context; the Dask workers get it from their environment)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
