"""Computing embeddings: the frozen backbone over the images (and augmented views) the store lacks.

`embed_missing` is the one place images go through a backbone to fill the store
(graft.embeddings.store); the features stage, `graft rank` and the few-shot benchmark call it.
The backbone runs through onnxruntime on the CPU and torch on CUDA (graft.embeddings.runtime),
or, with `features.cluster`, on a Dask cluster's workers (graft.embeddings.cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from graft.core.config import Params
from graft.core.device import pick_device
from graft.core.layout import Layout
from graft.core.progress import Progress
from graft.data.images import Preprocessing, decoded_batches
from graft.data.manifest import absolute_paths
from graft.embeddings.runtime import (
    Embedder,
    graph_path,
    identity,
    load_embedder,
    parity_sample,
    record_of,
)
from graft.embeddings.store import (
    VIEW_SPLITS,
    read_store,
    resolve_backbone,
    store_path,
    view_keys,
    weights_dir,
    with_backbone,
    write_store,
)
from graft.models.backbones import get_spec, weights_path

log = logging.getLogger(__name__)


@dataclass
class EmbedRun:
    """One backbone's store after `embed_missing`, and what it took to fill it."""

    store: dict[str, np.ndarray]
    computed: pd.DataFrame  # the rows whose content was embedded now
    runtime: str = "cached"  # onnxruntime | torch | cached (nothing to compute)
    device: str = "cpu"
    seconds: float = 0.0  # embedding (decoding included), not loading or writing the store
    record: dict = field(default_factory=dict)  # the exported graph's record (parity)


def embed_missing(layout: Layout, params: Params, df: pd.DataFrame) -> EmbedRun:
    """Embed the `df` rows whose content the store lacks, and the missing `features.views` of
    its train/val rows, and write the store back when there were any."""
    # resolved once, so that the network and the store file below are the same backbone's
    params = with_backbone(params, resolve_backbone(params, layout))
    cfg = params.features
    path = store_path(layout, params)
    pre = get_spec(cfg.backbone).preprocessing(cfg.image_size)
    wanted = identity(cfg.backbone, cfg.image_size,
                      weights_path(cfg.backbone, weights_dir(params, layout)))
    previous = record_of(path)
    # other weights behind the same name: the cached embeddings are another network's
    store = {} if previous and previous.get("weights_sha256") != wanted["weights_sha256"] \
        else read_store(path)
    todo = df.loc[~df["sha256"].isin(list(store))].drop_duplicates("sha256")
    labelled = df.loc[df["split"].isin(VIEW_SPLITS)].drop_duplicates("sha256")
    views_todo = labelled.loc[[any(k not in store for k in view_keys(sha, cfg.views))
                               for sha in labelled["sha256"]]]
    if not len(todo) and not len(views_todo):
        return EmbedRun(store, todo)
    t0 = time.perf_counter()
    paths = absolute_paths(todo, layout.manifest)
    here = todo
    runtime, device, record = f"Dask ({cfg.cluster})", "cluster", {}
    if len(todo) and cfg.cluster is not None:  # the cluster's workers build their own network
        graph = None
        if pick_device().type != "cuda":  # the graph exported (parity checked) here, once
            embedder = load_embedder(path, lambda: _network(params, layout), pre, wanted,
                                     lambda: parity_sample(_sample_first(todo, paths), pre,
                                                           params.validate.max_pixels))
            record = embedder.record
            if embedder.runtime == "onnxruntime":
                graph = str(graph_path(path).resolve())
        store.update(zip(todo["sha256"], _on_cluster(paths, params, layout, graph),
                         strict=True))
        here, paths = todo.iloc[:0], []
    if len(here) or len(views_todo):
        embedder = load_embedder(path, lambda: _network(params, layout), pre, wanted,
                                 lambda: parity_sample(_sample_first(here, paths), pre,
                                                       params.validate.max_pixels))
        runtime, device, record = embedder.runtime, embedder.device, embedder.record
        label = f"features: {cfg.backbone} at {cfg.image_size} px ({embedder.runtime})"
        store.update(zip(here["sha256"], embed_files(embedder, paths, pre, cfg.batch_size,
                                                     params.validate.max_pixels, label),
                         strict=True))
        if len(views_todo):  # labelled rows only: few, so always here
            store.update(_embed_views(embedder, views_todo, layout, pre, params))
    seconds = time.perf_counter() - t0
    write_store(path, store)
    return EmbedRun(store, todo, runtime, device, seconds, record)


def _on_cluster(paths: list[Path], params: Params, layout: Layout,
                graph: str | None) -> np.ndarray:
    """Embeddings of `paths` in order, computed on the Dask cluster `features.cluster` names;
    its CPU workers run the onnxruntime `graph` when there is one."""
    from graft.embeddings.cluster import Network, embed_on_cluster  # imports Prefect

    cfg = params.features
    net = Network(cfg.backbone, str(weights_dir(params, layout).resolve()), cfg.image_size,
                  cfg.batch_size, params.validate.max_pixels, graph)
    vectors, workers = embed_on_cluster(cfg.cluster, paths, net, cfg.shard_size)
    log.info("features: %d images embedded in shards of %d on %d Dask worker(s) of %s",
             len(paths), cfg.shard_size, len(workers), cfg.cluster)
    return vectors


def embed_files(embedder: Embedder, paths: Sequence[Path], pre: Preprocessing, batch_size: int,
                max_pixels: int, label: str) -> np.ndarray:
    """Embeddings float32 (len(paths), D) of the image files, in order, with progress."""
    out = []
    with Progress(label, len(paths), "img") as bar:
        for x in decoded_batches(paths, pre, batch_size, max_pixels):
            out.append(embedder(x))
            bar.update(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _network(params: Params, layout: Layout):
    from graft.models.backbones import create_model

    return create_model(params.features.backbone, num_classes=0,
                        weights_dir=weights_dir(params, layout))


def _sample_first(rows: pd.DataFrame, paths: list[Path]) -> list[Path]:
    """The images checked for parity when a graph is exported: validation rows first (they go
    through no other network later: training rows calibrate INT8, test rows check the
    exported model), then training, then the rest; by content hash within each."""
    rank = {"val": 0, "train": 1}
    order = sorted(range(len(rows)), key=lambda i: (rank.get(rows["split"].iloc[i], 2),
                                                     rows["sha256"].iloc[i]))
    return [paths[i] for i in order]


def _embed_views(embedder: Embedder, rows: pd.DataFrame, layout: Layout, pre: Preprocessing,
                 params: Params) -> dict[str, np.ndarray]:
    """{'<sha256>:<view>': embedding} for every view of `rows` (graft.embeddings.views)."""
    import torch  # the views are drawn by torchvision's transforms

    from graft.embeddings.views import make_views

    n_views, out = params.features.views, {}
    per_batch = max(1, params.features.batch_size // n_views)  # images whose views fill a batch
    paths = absolute_paths(rows, layout.manifest)
    with Progress("features: augmented views", len(rows) * n_views, "view") as bar:
        for i in range(0, len(rows), per_batch):
            shas = list(rows["sha256"].iloc[i:i + per_batch])
            images = pre.load_uint8(paths[i:i + per_batch], params.validate.max_pixels)
            views = make_views(torch.from_numpy(images), shas, n_views, pre).numpy()
            keys = [k for sha in shas for k in view_keys(sha, n_views)]
            out.update(zip(keys, embedder(views), strict=True))
            bar.update(len(keys))
    return out
