"""`features.cluster`: the features stage embeds on a Dask cluster through Prefect's
DaskTaskRunner (graft.embeddings.cluster) and writes the store the in-process run writes.

The cluster is a real distributed.LocalCluster listening on 127.0.0.1 (TCP, so the tasks and
their results cross the wire pickled); its two workers are threads of this process, so they share
its Prefect server: worker processes would each start a temporary one (~10 s) unless
PREFECT_API_URL names a server (README "Scaling out")."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator

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
from distributed import LocalCluster  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def cluster() -> Iterator[LocalCluster]:
    """A LocalCluster on tcp://127.0.0.1:PORT with two single-thread workers, closed after."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                           protocol="tcp://", host="127.0.0.1", dashboard_address=None)
    try:
        yield cluster
    finally:
        cluster.close()


def test_the_store_on_a_dask_cluster_is_the_in_process_store(tiny_base, tmp_path,
                                                              cluster) -> None:
    local = read_store(store_path(Layout(tiny_base), tiny_params()))  # the in-process run
    scheduler = cluster.scheduler_address
    assert scheduler.startswith("tcp://127.0.0.1:")
    layout = copy_stage_outputs(tiny_base, tmp_path)
    path = store_path(layout, tiny_params())
    path.unlink()
    params = tiny_params(features={"cluster": scheduler, "shard_size": 4})
    metrics = features.run(params, layout)
    assert metrics["n_computed"] == len(local) and metrics["n_cached"] == 0
    assert metrics["cluster"] == scheduler
    shards = sum(w.state.executed_count for w in cluster.workers.values())
    assert shards == math.ceil(len(local) / 4)  # every shard ran as a task on the workers
    remote = read_store(path)
    assert sorted(remote) == sorted(local)
    for sha, vector in local.items():
        # other batches (shards of 4 vs one batch of 21): float rounding, ~5e-6 here
        np.testing.assert_allclose(remote[sha], vector, rtol=1e-4, atol=2e-5)

    # a rerun computes only what the store lacks: here nothing, so no task runs
    assert features.run(params, layout)["n_computed"] == 0


def test_errors_raised_on_a_worker_reach_the_flow_whole() -> None:
    # Dask and torchrun pickle a worker's exception: one that cannot be rebuilt from its args
    # arrives as a TypeError about __init__ instead of the message naming the file
    for error in (ImageError("/data/a.png", "cannot decode"), BudgetExceeded(1200.0, 600.0)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)


def test_cluster_must_be_a_scheduler_address() -> None:
    with pytest.raises(ConfigError, match=r"features.cluster = 'localhost:8786' must be a Dask"):
        check_params(tiny_params(features={"cluster": "localhost:8786"}).features, "params.yaml")
