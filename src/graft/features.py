"""The features stage: embeddings of every manifest image from the frozen, pretrained backbone.

The store `data/features/<backbone>-<size>.npz` maps content hash (sha256) → embedding. A rerun
computes embeddings only for content the store lacks, so ten new images cost ten forward passes;
changing the backbone or size uses (or builds) another store file.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from graft.backbones import create_model, get_spec
from graft.config import Params
from graft.files import atomic_output, write_json
from graft.inference import pick_device, run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest


class FeaturesError(ValueError):
    """Cached features that do not cover the manifest."""


def store_path(layout: Layout, params: Params) -> Path:
    return layout.features / f"{params.features.backbone}-{params.features.image_size}.npz"


def read_store(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return dict(zip(npz["sha256"].tolist(), npz["features"], strict=True))


def write_store(path: Path, store: dict[str, np.ndarray]) -> None:
    shas = sorted(store)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:  # file handle: savez would add .npz
        np.savez(fh, sha256=np.array(shas, dtype="U64"),
                 features=np.stack([store[s] for s in shas]).astype(np.float32))


def load_features(layout: Layout, params: Params, df: pd.DataFrame) -> np.ndarray:
    """Embeddings float32 (len(df), D), row i for df row i, from the store the stage wrote."""
    path = store_path(layout, params)
    store = read_store(path)
    missing = [s for s in df["sha256"] if s not in store]
    if missing:
        raise FeaturesError(
            f"{path}: {len(missing)} manifest image(s) have no cached embedding "
            f"(first sha256 {missing[0][:12]}…); run the features stage"
        )
    return np.stack([store[s] for s in df["sha256"]]).astype(np.float32)


def embed_missing(layout: Layout, params: Params, df: pd.DataFrame
                  ) -> tuple[dict[str, np.ndarray], pd.DataFrame, torch.device, float]:
    """Embed the `df` rows whose content the store lacks and write the store back when there
    were any: (store, rows computed, device, seconds spent computing)."""
    cfg = params.features
    path = store_path(layout, params)
    store = read_store(path)
    todo = df.loc[~df["sha256"].isin(list(store))].drop_duplicates("sha256")
    device = pick_device()
    compute_s = 0.0
    if len(todo):
        model = create_model(cfg.backbone, num_classes=0)
        t0 = time.perf_counter()
        vectors = run_model(model, absolute_paths(todo, layout.manifest),
                            get_spec(cfg.backbone).preprocessing(cfg.image_size), cfg.batch_size,
                            device, params.validate.max_pixels)
        compute_s = time.perf_counter() - t0
        store.update(zip(todo["sha256"], vectors, strict=True))
        write_store(path, store)
    return store, todo, device, compute_s


def run(params: Params, layout: Layout) -> dict:
    started = time.perf_counter()
    cfg = params.features
    df = read_manifest(layout.manifest)
    path = store_path(layout, params)
    store, todo, device, compute_s = embed_missing(layout, params, df)

    dim = next(iter(store.values())).shape[0] if store else 0
    metrics = {
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "dim": int(dim),
        "n_images": int(len(df)),
        "n_computed": int(len(todo)),
        "n_cached": int(len(df) - len(todo)),
        "device": device.type,
        "images_per_s": round(len(todo) / compute_s, 1) if compute_s else None,
        "seconds": round(time.perf_counter() - started, 2),
        "store": str(path.relative_to(layout.root)),
    }
    write_json(layout.metrics("features"), metrics)
    return metrics
