"""Stage `validate`: the rules of graft.data.checks over data/prepared stop bad data before
training. Writes reports/validate.json (each rule, its observed value and offenders),
reports/quarantine.csv (every offending file) and metrics/validate.json; raises ValidationError
when a rule fails (after the reports are written).
"""

from __future__ import annotations

from graft.core.config import Params
from graft.core.files import write_csv, write_json
from graft.core.layout import Layout
from graft.data.checks import ValidationError, check_manifest, failure_message, quarantine_rows
from graft.data.manifest import SPLITS, UNLABELED, read_manifest, read_origins

__all__ = ["ValidationError", "run"]


def run(params: Params, layout: Layout) -> dict:
    """Validate data/prepared; write the reports; raise ValidationError if any rule fails."""
    v = params.validate
    df = read_manifest(layout.manifest)
    files, classes, checks = check_manifest(df, layout.manifest.parent, v)
    ratio = float(classes["ratio_to_smallest"].max()) if len(classes) else None

    write_json(layout.report("validate.json"), {
        "manifest": str(layout.manifest), "success": all(c.success for c in checks),
        "checks": [vars(c) for c in checks],
    })
    quarantine = quarantine_rows(files, checks, v, read_origins(layout.origins))
    write_csv(layout.report("quarantine.csv"), ["path", "rule", "problem", "origin"], quarantine)
    failed = [c for c in checks if not c.success]
    if failed:
        raise ValidationError(failure_message(layout, failed, quarantine))

    metrics = {
        "n_images": len(df),
        "n_classes": len(classes),
        **{f"n_{s}": int((df["split"] == s).sum()) for s in (*SPLITS, UNLABELED)},
        "imbalance_ratio": None if ratio is None else round(ratio, 4),
        "checks": {c.rule: c.success for c in checks},
    }
    write_json(layout.metrics("validate"), metrics)
    return metrics
