"""Stage `features`: embeddings of every manifest image from the frozen, pretrained backbone(s).

Fills the embedding store (graft.embeddings) for every backbone the later stages need:
features.backbone, the backbones of the chosen strategy (the ensemble's members), or with
`features.backbone: auto` every one of `features.auto_backbones`, of which the top LogME one on
the training rows is chosen (graft.evaluation.transferability). metrics/features.json records the
choice (`backbone`) and the ranking (`backbone_selection`); the later stages read the choice
there. A rerun computes only what the store lacks.
"""

from __future__ import annotations

import time

from graft.core.config import Params
from graft.core.files import write_json
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.embed import embed_missing
from graft.embeddings.store import AUTO, check_params, store_path, with_backbone
from graft.strategies import extra_backbones


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
        # here, not at the top: it imports scikit-learn (1.5 s) that a fixed backbone never needs
        from graft.evaluation.transferability import select_backbone

        selection = select_backbone(runs, df, layout)
        backbone = selection["ranking"][0]["backbone"]
    else:
        selection, backbone = {"method": "fixed"}, cfg.backbone

    chosen = runs[backbone]
    n_computed = sum(len(run.computed) for run in runs.values())
    compute_s = sum(run.seconds for run in runs.values())
    dim = next(iter(chosen.store.values())).shape[0] if chosen.store else 0
    path = store_path(layout, with_backbone(params, backbone))
    metrics = {
        "backbone": backbone,
        "image_size": cfg.image_size,
        "dim": int(dim),
        "n_images": int(len(df)),
        "n_computed": int(n_computed),
        "n_cached": int(len(df) * len(names) - n_computed),
        "runtime": chosen.runtime,  # onnxruntime | torch | Dask (<scheduler>) | cached
        "device": chosen.device,
        "cluster": cfg.cluster,  # the Dask scheduler the images were embedded on; null: here
        "images_per_s": round(n_computed / compute_s, 1) if compute_s else None,
        "seconds": round(time.perf_counter() - started, 2),
        "store": str(path.relative_to(layout.root)),
        "backbones_embedded": names,
        "views": cfg.views,
        "backbone_selection": selection,
        # the exported graph's agreement with torch, measured when it was exported
        "graph_parity": (chosen.record or {}).get("parity"),
    }
    write_json(layout.metrics("features"), metrics)
    return metrics


def needed_backbones(params: Params) -> list[str]:
    """Every backbone the stage embeds with: features.auto_backbones for `auto` (to choose
    one), else features.backbone and the backbones the strategy itself needs (an ensemble's)."""
    if params.features.backbone == AUTO:
        return list(dict.fromkeys(params.features.auto_backbones))
    names = [params.features.backbone, *extra_backbones(params.finetune)]
    return list(dict.fromkeys(names))
