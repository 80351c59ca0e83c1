"""Computing embeddings: the frozen backbone over the images (and augmented views) the store lacks.

`embed_missing` is the one place images go through a backbone to fill the store
(graft.embeddings.store); the features stage, `graft rank` and the few-shot benchmark call it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from graft.core.config import Params
from graft.core.device import pick_device
from graft.core.layout import Layout
from graft.data.images import Preprocessing
from graft.data.manifest import absolute_paths
from graft.embeddings.store import (
    VIEW_SPLITS,
    read_store,
    resolve_backbone,
    store_path,
    weights_dir,
    with_backbone,
    write_store,
)
from graft.embeddings.views import make_views, view_keys
from graft.models.backbones import create_model, get_spec
from graft.models.inference import run_model

log = logging.getLogger(__name__)

# embed_missing's result: (store, rows computed, device, seconds spent computing)
EmbedRun = tuple[dict[str, np.ndarray], pd.DataFrame, torch.device, float]


def embed_missing(layout: Layout, params: Params, df: pd.DataFrame) -> EmbedRun:
    """Embed the `df` rows whose content the store lacks, and the missing `features.views` of
    its train/val rows, and write the store back when there were any: (store, rows computed,
    device, seconds spent computing)."""
    # resolved once, so that the network and the store file below are the same backbone's
    params = with_backbone(params, resolve_backbone(params, layout))
    cfg = params.features
    path = store_path(layout, params)
    store = read_store(path)
    todo = df.loc[~df["sha256"].isin(list(store))].drop_duplicates("sha256")
    labelled = df.loc[df["split"].isin(VIEW_SPLITS)].drop_duplicates("sha256")
    views_todo = labelled.loc[[any(k not in store for k in view_keys(sha, cfg.views))
                               for sha in labelled["sha256"]]]
    device = pick_device()
    compute_s = 0.0
    if len(todo) or len(views_todo):
        pre = get_spec(cfg.backbone).preprocessing(cfg.image_size)
        t0 = time.perf_counter()
        if len(todo) and cfg.cluster is not None:  # the cluster's workers build their own
            vectors = _on_cluster(absolute_paths(todo, layout.manifest), params, layout)
            store.update(zip(todo["sha256"], vectors, strict=True))
            todo_here = todo.iloc[:0]
        else:
            todo_here = todo
        if len(todo_here) or len(views_todo):
            model = create_model(cfg.backbone, num_classes=0,
                                 weights_dir=weights_dir(params, layout))
        if len(todo_here):
            vectors = run_model(model, absolute_paths(todo_here, layout.manifest), pre,
                                cfg.batch_size, device, params.validate.max_pixels)
            store.update(zip(todo_here["sha256"], vectors, strict=True))
        if len(views_todo):  # labelled rows only: few, so always here
            store.update(_embed_views(model, views_todo, layout, pre, params, device))
        compute_s = time.perf_counter() - t0
        write_store(path, store)
    return store, todo, device, compute_s


def _on_cluster(paths: list[Path], params: Params, layout: Layout) -> np.ndarray:
    """Embeddings of `paths` in order, computed on the Dask cluster `features.cluster` names."""
    from graft.embeddings.cluster import Network, embed_on_cluster  # imports Prefect

    cfg = params.features
    net = Network(cfg.backbone, str(weights_dir(params, layout).resolve()), cfg.image_size,
                  cfg.batch_size, params.validate.max_pixels)
    vectors, workers = embed_on_cluster(cfg.cluster, paths, net, cfg.shard_size)
    log.info("features: %d images embedded in shards of %d on %d Dask worker(s) of %s",
             len(paths), cfg.shard_size, len(workers), cfg.cluster)
    return vectors


@torch.inference_mode()
def _embed_views(model: torch.nn.Module, rows: pd.DataFrame, layout: Layout,
                 pre: Preprocessing, params: Params, device: torch.device
                 ) -> dict[str, np.ndarray]:
    """{'<sha256>:<view>': embedding} for every view of `rows` (graft.embeddings.views)."""
    n_views, out = params.features.views, {}
    model = model.eval().to(device)
    per_batch = max(1, params.features.batch_size // n_views)  # images whose views fill a batch
    paths = absolute_paths(rows, layout.manifest)
    for i in range(0, len(rows), per_batch):
        shas = list(rows["sha256"].iloc[i:i + per_batch])
        images = pre.load_uint8(paths[i:i + per_batch], params.validate.max_pixels)
        views = make_views(torch.from_numpy(images), shas, n_views, pre)
        vectors = model(views.to(device)).float().cpu().numpy()
        keys = [k for sha in shas for k in view_keys(sha, n_views)]
        out.update(zip(keys, vectors, strict=True))
    return out
