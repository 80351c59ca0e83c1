"""`features.cluster`: the features stage embeds on a Dask cluster through Prefect's
DaskTaskRunner (graft.embeddings.cluster) and writes the store the in-process run writes.

The cluster (conftest's `dask_cluster`) is real processes on 127.0.0.1, started as
docs/scaling.md says: a `dask scheduler` and two `dask worker --nthreads 1` from the project's
own environment, with PREFECT_API_URL naming the session's Prefect server (without it each worker
starts a temporary server). The stage runs in this process against that server; the tasks and
their results cross the wire pickled, and the workers read the images at their absolute paths.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from graft.core.config import ConfigError
from graft.core.layout import Layout
from graft.data.images import ImageError
from graft.embeddings.store import check_params, read_store, store_path
from graft.stages import features
from graft.strategies.training import BudgetExceeded
from tests.fixtures import copy_stage_outputs, tiny_params

pytest.importorskip("prefect_dask")
from distributed import Client  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _executed(client: Client) -> dict[str, int]:
    """Tasks each worker process has run so far, by worker address."""
    return client.run(lambda dask_worker: dask_worker.state.executed_count)


def _networks_built() -> tuple[int, int]:
    """(onnxruntime sessions, torch networks) this worker process has built."""
    from graft.embeddings import cluster

    return cluster._session.cache_info().currsize, cluster._network.cache_info().currsize


def _assert_same_store(path: Path, local: dict[str, np.ndarray]) -> None:
    remote = read_store(path)
    assert sorted(remote) == sorted(local)
    for sha, vector in local.items():
        # the same graph in other batches (shards of a few images vs one batch of 21)
        np.testing.assert_allclose(remote[sha], vector, rtol=1e-5, atol=1e-6)


def test_the_store_on_dask_workers_is_the_in_process_store(dask_cluster, tiny_base, tmp_path,
                                                            prefect_api) -> None:
    local = read_store(store_path(Layout(tiny_base), tiny_params()))  # the in-process run
    dask_cluster.wait()
    layout = copy_stage_outputs(tiny_base, tmp_path)
    path = store_path(layout, tiny_params())
    path.unlink()
    params = tiny_params(features={"cluster": dask_cluster.address, "shard_size": 4})
    with Client(dask_cluster.address) as client:
        before = _executed(client)
        metrics = features.run(params, layout)
        ran = {w: n - before.get(w, 0) for w, n in _executed(client).items()}
        pids = client.run(os.getpid)
        built = client.run(_networks_built)
    assert metrics["n_computed"] == len(local) and metrics["n_cached"] == 0
    assert metrics["cluster"] == dask_cluster.address
    shards = -(-len(local) // 4)
    assert sum(ran.values()) == shards  # every shard ran as a task on a worker process
    assert len(pids) == 2 and os.getpid() not in pids.values()  # two other processes
    # CPU workers run the graph the flow exported (and checked), as the stage does in-process
    assert sum(s for s, _ in built.values()) >= 1 and sum(n for _, n in built.values()) == 0
    _assert_same_store(path, local)

    # a rerun computes only what the store lacks: here nothing, so no task runs
    assert features.run(params, layout)["n_computed"] == 0


def test_a_worker_killed_mid_run_leaves_the_other_to_finish(dask_cluster, tiny_base, tmp_path,
                                                            prefect_api) -> None:
    local = read_store(store_path(Layout(tiny_base), tiny_params()))
    dask_cluster.wait(2)
    layout = copy_stage_outputs(tiny_base, tmp_path)
    path = store_path(layout, tiny_params())
    path.unlink()
    params = tiny_params(features={"cluster": dask_cluster.address, "shard_size": 2})
    killed: list[str] = []
    done = threading.Event()
    with Client(dask_cluster.address) as client:
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}

        def kill_the_first_busy_worker() -> None:  # SIGKILL, nanny and worker: no restart
            while not done.is_set():
                busy = [a for a, keys in client.processing().items() if keys]
                if busy:
                    killed.append(names[busy[0]])
                    dask_cluster.kill(names[busy[0]])
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_the_first_busy_worker, daemon=True)
        watcher.start()
        try:
            metrics = features.run(params, layout)
        finally:
            done.set()
            watcher.join(10)
            for name in killed:  # the session's cluster gets its second worker back
                dask_cluster.add_worker(name)
        assert killed, "no shard was seen running"
        deadline = time.monotonic() + 10
        while len(client.scheduler_info()["workers"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [w["name"] for w in client.scheduler_info()["workers"].values()]
        assert len(survivors) == 1 and survivors != killed
    assert metrics["n_computed"] == len(local)
    _assert_same_store(path, local)


def test_errors_raised_on_a_worker_reach_the_flow_whole() -> None:
    # Dask and torchrun pickle a worker's exception: one that cannot be rebuilt from its args
    # arrives as a TypeError about __init__ instead of the message naming the file
    for error in (ImageError("/data/a.png", "cannot decode"), BudgetExceeded(1200.0, 600.0)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_cluster_must_be_a_scheduler_address() -> None:
    with pytest.raises(ConfigError, match=r"features.cluster = 'localhost:8786' must be a Dask"):
        check_params(tiny_params(features={"cluster": "localhost:8786"}).features, "params.yaml")
