"""The end-of-run summary printed by `graft summary` and `make demo`, read from metrics/*.json."""

from __future__ import annotations

import json
from typing import Any

from graft.core.config import read_yaml
from graft.core.layout import Layout
from graft.evaluation.report import summary_lines as evaluation_lines


def _read(layout: Layout, stage: str) -> dict:
    path = layout.metrics(stage)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run the pipeline first (dvc repro)")
    return json.loads(path.read_text(encoding="utf-8"))


def summary_lines(layout: Layout) -> list[str]:
    """Data, strategy, the evaluation (accuracy vs baselines, transfer gain), the model files."""
    ingest, finetune, evaluate = (_read(layout, s) for s in ("ingest", "finetune", "evaluate"))
    splits = ", ".join(f"{ingest[f'n_{s}']} {s}" for s in ("train", "val", "test"))
    val = finetune.get("val_accuracy")
    changed = params_changed_since_run(layout)
    lines = [f"WARNING: params.yaml changed since these figures were made ({', '.join(changed)}):"
             " they are not your current settings' results; run `dvc repro`"] if changed else []
    lines += [
        f"data: {ingest['source']}, {ingest['n_classes']} classes, {splits} images",
        f"strategy: {finetune['strategy']}"
        + (f" (validation accuracy {100 * val:.1f}%)" if val is not None else ""),
        *evaluation_lines(evaluate),
    ]
    trained = layout.baseline_model if evaluate.get("deployed") == "baseline" else layout.model
    models = [trained, *sorted(layout.models.glob("model*.onnx"))]  # what the .onnx came from
    lines += [f"model: {p} ({p.stat().st_size / 1e6:.1f} MB)" for p in models if p.exists()]
    return lines


def params_changed_since_run(layout: Layout) -> list[str]:
    """The params.yaml keys whose value differs from what dvc.lock records the last `dvc repro`
    ran with (a fresh clone's committed demo figures, once the user edits params.yaml)."""
    if not (layout.dvc_lock.exists() and layout.params.exists()):
        return []
    lock, current = read_yaml(layout.dvc_lock) or {}, _flat(read_yaml(layout.params) or {})
    changed: set[str] = set()
    for stage in (lock.get("stages") or {}).values():
        recorded = _flat((stage.get("params") or {}).get("params.yaml") or {})
        changed |= {key for key, value in recorded.items() if current.get(key) != value}
    return sorted(changed)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
