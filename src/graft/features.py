"""The features stage: embeddings of every manifest image from the frozen, pretrained backbone.

The store `data/features/<backbone>-<size>.npz` maps content hash (sha256) → embedding. A rerun
computes embeddings only for content the store lacks, so ten new images cost ten forward passes;
changing the backbone or size uses (or builds) another store file.

With `features.backbone: auto` every backbone in `features.auto_backbones` (default: the three
EfficientNet-Lite ones) embeds every manifest image (each into its own store), graft.rank scores
each one's training rows (LogME, H-score) and the top LogME backbone is chosen.
metrics/features.json records the choice (`backbone`) and the ranking (`backbone_selection`);
the later stages read the choice there (`resolve_backbone`). With `finetune.strategy: ensemble`
every `finetune.ensemble_backbones` embeds them too. A `timm:<name>` backbone (graft.backbones)
reads its weights from `features.weights_dir`; its store is `timm-<name>-<size>.npz`.

With `features.views: N` the train and val images also get N augmented views each (graft.views),
cached in the same store under '<sha256>:<view>' keys; `load_views` gives them to the finetune
stage. Test images never get views: they are scored as they come.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from graft import rank
from graft.backbones import BACKBONES, TIMM_PREFIX, create_model, get_spec, is_backbone
from graft.config import ConfigError, FeaturesParams, Params
from graft.files import atomic_output, write_json
from graft.images import Preprocessing
from graft.inference import pick_device, run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest
from graft.views import make_views, view_keys

AUTO = "auto"  # features.backbone: choose among auto_backbones by LogME on the training rows
VIEW_SPLITS = ("train", "val")  # the rows that get augmented views (features.views)
# embed_missing's result: (store, rows computed, device, seconds spent computing)
EmbedRun = tuple[dict[str, np.ndarray], pd.DataFrame, torch.device, float]


class FeaturesError(ValueError):
    """Cached features that do not cover the manifest, or a backbone choice not made yet."""


def check_params(p: FeaturesParams, source: str = "params") -> None:
    """Values the type check in graft.config cannot express; raises ConfigError naming the key."""
    choices = f"{', '.join([*BACKBONES, AUTO])}, or {TIMM_PREFIX}<a timm.list_models() name>"
    rules = [
        ("backbone", p.backbone == AUTO or is_backbone(p.backbone), f"one of {choices}"),
        ("auto_backbones", bool(p.auto_backbones) and all(map(is_backbone, p.auto_backbones)),
         f"a non-empty list of {', '.join(BACKBONES)} or {TIMM_PREFIX}<name>"),
        ("weights_dir", bool(p.weights_dir), "a folder"),
        ("image_size", p.image_size >= 1, "≥ 1"),
        ("batch_size", p.batch_size >= 1, "≥ 1"),
        ("views", p.views >= 0, "≥ 0"),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{source}: features.{key} = {getattr(p, key)!r} must be {rule}")


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
    # 'timm:resnet18' → 'timm-resnet18': no ':' in file names (Windows, scp, DVC remotes)
    stem = resolve_backbone(params, layout).replace(":", "-")
    return layout.features / f"{stem}-{params.features.image_size}.npz"


def read_store(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as npz:
        return dict(zip(npz["sha256"].tolist(), npz["features"], strict=True))


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


def load_views(layout: Layout, params: Params, df: pd.DataFrame) -> np.ndarray | None:
    """The `features.views` views of df's rows, float32 (len(df), N, D); None when N is 0."""
    path = store_path(layout, params)
    return _cached_views(read_store(path), path, df, params.features.views)


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
        model = create_model(cfg.backbone, num_classes=0,
                             weights_dir=weights_dir(params, layout))
        pre = get_spec(cfg.backbone).preprocessing(cfg.image_size)
        t0 = time.perf_counter()
        if len(todo):
            vectors = run_model(model, absolute_paths(todo, layout.manifest), pre,
                                cfg.batch_size, device, params.validate.max_pixels)
            store.update(zip(todo["sha256"], vectors, strict=True))
        if len(views_todo):
            store.update(_embed_views(model, views_todo, layout, pre, params, device))
        compute_s = time.perf_counter() - t0
        write_store(path, store)
    return store, todo, device, compute_s


@torch.inference_mode()
def _embed_views(model: torch.nn.Module, rows: pd.DataFrame, layout: Layout,
                 pre: Preprocessing, params: Params, device: torch.device
                 ) -> dict[str, np.ndarray]:
    """{'<sha256>:<view>': embedding} for every view of `rows` (graft.views)."""
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


def run(params: Params, layout: Layout) -> dict:
    """Embed every manifest image with features.backbone (with `auto`: with every backbone, then
    choose one); write metrics/features.json and return it. n_computed and n_cached count over
    every backbone embedded; dim and store are the chosen backbone's."""
    started = time.perf_counter()
    cfg = params.features
    check_params(cfg, str(layout.params))
    df = read_manifest(layout.manifest)
    names = needed_backbones(params)
    runs = {name: embed_missing(layout, with_backbone(params, name), df) for name in names}
    if cfg.backbone == AUTO:
        selection = select_backbone(runs, df, layout)
        backbone = selection["ranking"][0]["backbone"]
    else:
        selection, backbone = {"method": "fixed"}, cfg.backbone

    store = runs[backbone][0]
    n_computed = sum(len(todo) for _, todo, _, _ in runs.values())
    compute_s = sum(seconds for *_, seconds in runs.values())
    dim = next(iter(store.values())).shape[0] if store else 0
    path = store_path(layout, with_backbone(params, backbone))
    metrics = {
        "backbone": backbone,
        "image_size": cfg.image_size,
        "dim": int(dim),
        "n_images": int(len(df)),
        "n_computed": int(n_computed),
        "n_cached": int(len(df) * len(names) - n_computed),
        "device": runs[backbone][2].type,
        "images_per_s": round(n_computed / compute_s, 1) if compute_s else None,
        "seconds": round(time.perf_counter() - started, 2),
        "store": str(path.relative_to(layout.root)),
        "backbones_embedded": names,
        "views": cfg.views,
        "backbone_selection": selection,
    }
    write_json(layout.metrics("features"), metrics)
    return metrics


def needed_backbones(params: Params) -> list[str]:
    """Every backbone the stage embeds with: features.auto_backbones for `auto` (to choose
    one), else features.backbone and, for the ensemble strategy, its members' backbones."""
    if params.features.backbone == AUTO:
        return list(dict.fromkeys(params.features.auto_backbones))
    names = [params.features.backbone]
    if params.finetune.strategy == "ensemble":
        names += params.finetune.ensemble_backbones
    return list(dict.fromkeys(names))


def select_backbone(runs: dict[str, EmbedRun], df: pd.DataFrame, layout: Layout) -> dict:
    """`auto`: every backbone's graft.rank scores on its training-row embeddings, best LogME
    first (the top one is chosen: LogME's order agreed with linear probes where H-score's did
    not, README "graft rank")."""
    train, y = rank.training_rows(df, layout.manifest)
    ranking = [{"backbone": name, **rank.score(embeddings(store, train), y)}
               for name, (store, *_) in runs.items()]
    return {"method": "logme", "ranking": rank.best_first(ranking)}
