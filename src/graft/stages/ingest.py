"""Stage `ingest`: gather a labelled image set into data/prepared (images + manifest.csv).

Reads the source named by `params.ingest` (graft.data.sources) and the unlabelled folder
`ingest.unlabeled_path` when set, de-duplicates, splits and copies them (graft.data.prepare), then
writes reports/ingest.json (counts, short classes, what was left out and why) and
metrics/ingest.json.
"""

from __future__ import annotations

from graft.core.config import Params
from graft.core.files import write_json
from graft.core.layout import Layout
from graft.core.progress import say
from graft.data.manifest import SPLITS, UNLABELED, labelled
from graft.data.prepare import prepare


def run(params: Params, layout: Layout) -> dict:
    """Ingest `params.ingest.source`; write data/prepared, reports/ingest.json, metrics."""
    p = params.ingest
    done = prepare(p, layout)
    manifest = done.manifest
    counts = {s: manifest.loc[manifest["split"] == s, "label"].value_counts().sort_index()
              .to_dict() for s in SPLITS}
    n_unlabeled = int((manifest["split"] == UNLABELED).sum())
    short = [{"label": label, "train_images": n, "wanted": p.shots_per_class}
             for label, n in counts["train"].items()
             if p.shots_per_class is not None and n < p.shots_per_class]
    write_json(layout.report("ingest.json"), {
        "source": p.source, "path": str(p.path), "seed": p.seed,
        "counts": {**counts, UNLABELED: n_unlabeled}, "short_classes": short,
        "unreadable": manifest.loc[manifest["mode"] == "unreadable", "path"].tolist(),
        "ignored": done.found.ignored, "duplicates": done.duplicates,
        "conflicts": done.conflicts,
        "unlabeled_path": p.unlabeled_path,
        "unlabeled_copies": done.unlabeled_copies,  # copies of labelled images: left out
    })
    metrics = {
        "source": p.source,
        "n_images": len(manifest),
        "n_classes": int(labelled(manifest)["label"].nunique()),
        **{f"n_{s}": int(sum(counts[s].values())) for s in SPLITS},
        "n_unlabeled": n_unlabeled,
        "n_ignored": len(done.found.ignored),
        "n_duplicates": len(done.duplicates),
        "n_conflicts": len(done.conflicts),
    }
    write_json(layout.metrics("ingest"), metrics)
    say(split_line(metrics, counts))
    return metrics


def split_line(metrics: dict, counts: dict[str, dict[str, int]]) -> str:
    """How ingest split the images, in one line: totals, and the range per class."""
    def per_class(split: str) -> str:
        values = list(counts[split].values()) or [0]
        lo, hi = min(values), max(values)
        return f"{split} {metrics[f'n_{split}']} ({lo if lo == hi else f'{lo}–{hi}'}/class)"

    return (f"ingest: {metrics['n_images']} images, {metrics['n_classes']} classes → "
            + ", ".join(per_class(s) for s in ("train", "val", "test"))
            + (f", {metrics['n_unlabeled']} unlabelled" if metrics.get("n_unlabeled") else ""))
