"""The embedding store: pooled features of the frozen, pretrained backbone, by content hash.

`data/features/<backbone>-<size>.npz` maps content hash (sha256) → embedding, so a rerun computes
embeddings only for content the store lacks (graft.embeddings.embed) and ten new images cost ten
forward passes; another backbone or size is another store file. A `timm:<name>` backbone's store
is `timm-<name>-<size>.npz`. With `features.views: N`, train and val images also have N augmented
views under '<sha256>:<view>' keys (graft.embeddings.views); test images never do.

With `features.backbone: auto` the features stage chooses the backbone and records it in
metrics/features.json; `resolve_backbone` reads the choice there for every later stage.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from graft.core.config import Params
from graft.core.files import atomic_output
from graft.core.layout import Layout
from graft.embeddings.choice import AUTO, check_params  # noqa: F401  (re-exported)

VIEW_SPLITS = ("train", "val")  # the rows that get augmented views (features.views)


class FeaturesError(ValueError):
    """Cached features that do not cover the manifest, or a backbone choice not made yet."""



def with_backbone(params: Params, backbone: str) -> Params:
    """`params` with features.backbone set to `backbone`."""
    return dataclasses.replace(params, features=dataclasses.replace(params.features,
                                                                    backbone=backbone))


def resolve_backbone(params: Params, layout: Layout) -> str:
    """The backbone whose store and network the stages use: features.backbone, or for `auto` the
    one the features stage chose, read from metrics/features.json (a dep of the finetune stage:
    the choice changes only when the features stage reruns)."""
    cfg = params.features
    if cfg.backbone != AUTO:
        return cfg.backbone
    path = layout.metrics("features")
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeaturesError(f"{path}: not found; features.backbone is auto and the chosen "
                            "backbone is recorded there: run the features stage") from None
    selection = written.get("backbone_selection") or {}
    if selection.get("method") != "logme" or written.get("image_size") != cfg.image_size:
        mode = "auto" if selection.get("method") == "logme" else written.get("backbone")
        raise FeaturesError(f"{path}: written for features.backbone {mode} at image_size "
                            f"{written.get('image_size')}, params ask for auto at "
                            f"{cfg.image_size}; run the features stage")
    return written["backbone"]


def weights_dir(params: Params, layout: Layout) -> Path:
    """features.weights_dir, where `timm:` backbones find their weights, from the project root
    (an absolute path stays as it is)."""
    return layout.root / params.features.weights_dir


def store_path(layout: Layout, params: Params) -> Path:
    """The store of the resolved backbone (see resolve_backbone) at features.image_size."""
    return store_file(layout, resolve_backbone(params, layout), params.features.image_size)


def store_file(layout: Layout, backbone: str, image_size: int) -> Path:
    """data/features/<backbone>-<size>.npz ('timm:resnet18' → 'timm-resnet18': no ':' in file
    names, for Windows, scp and DVC remotes)."""
    return layout.features / f"{backbone.replace(':', '-')}-{image_size}.npz"


def view_keys(sha256: str, n_views: int) -> list[str]:
    """Store keys of an image's augmented views (graft.embeddings.views): '<sha256>:1' …
    '<sha256>:N'."""
    return [f"{sha256}:{i}" for i in range(1, n_views + 1)]


def read_store(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    if not path.is_file():  # a folder, or a FIFO that would block the read
        raise FeaturesError(f"{path}: not a regular file; delete it, then run the features "
                            "stage again")
    try:  # a cache a user may pull or copy: arrays only, never pickled objects
        with np.load(path, allow_pickle=False) as npz:
            return dict(zip(npz["sha256"].tolist(), npz["features"], strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise FeaturesError(f"{path}: not a readable feature store ({type(exc).__name__}: "
                            f"{str(exc)[:200]}); delete it, then run the features stage "
                            "again") from None


def write_store(path: Path, store: dict[str, np.ndarray]) -> None:
    shas = sorted(store)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:  # file handle: savez would add .npz
        np.savez(fh, sha256=np.array(shas),  # sha256, or '<sha256>:<view>' for a view
                 features=np.stack([store[s] for s in shas]).astype(np.float32))


def embeddings(store: dict[str, np.ndarray], df: pd.DataFrame) -> np.ndarray:
    """float32 (len(df), D), row i the embedding of df row i's content."""
    return np.stack([store[s] for s in df["sha256"]]).astype(np.float32)


def load_features(layout: Layout, params: Params, df: pd.DataFrame) -> np.ndarray:
    """Embeddings float32 (len(df), D), row i for df row i, from the store the stage wrote."""
    path = store_path(layout, params)
    return _cached_rows(read_store(path), path, df)


def load_embeddings(layout: Layout, params: Params, df: pd.DataFrame
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """`load_features` and `load_views` of df's rows from one read of the store."""
    path = store_path(layout, params)
    store = read_store(path)
    return (_cached_rows(store, path, df),
            _cached_views(store, path, df, params.features.views))


def _cached_rows(store: dict[str, np.ndarray], path: Path, df: pd.DataFrame) -> np.ndarray:
    missing = [s for s in df["sha256"] if s not in store]
    if missing:
        raise FeaturesError(
            f"{path}: {len(missing)} manifest image(s) have no cached embedding "
            f"(first sha256 {missing[0][:12]}…); run the features stage"
        )
    return embeddings(store, df)


def _cached_views(store: dict[str, np.ndarray], path: Path, df: pd.DataFrame,
                  n_views: int) -> np.ndarray | None:
    if n_views == 0:
        return None
    keys = [view_keys(sha, n_views) for sha in df["sha256"]]
    missing = [k for row in keys for k in row if k not in store]
    if missing:
        raise FeaturesError(f"{path}: {len(missing)} augmented view(s) are not cached (first "
                            f"{missing[0][:12]}…:{missing[0].split(':')[1]}); run the features "
                            "stage (features.views applies to train and val images)")
    return np.stack([np.stack([store[k] for k in row]) for row in keys]).astype(np.float32)
