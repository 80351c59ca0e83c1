"""The end-of-run summary printed by `graft summary` and `make demo`, read from metrics/*.json."""

from __future__ import annotations

import json

from graft.layout import Layout


def _read(layout: Layout, stage: str) -> dict:
    path = layout.metrics(stage)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run the pipeline first (dvc repro)")
    return json.loads(path.read_text(encoding="utf-8"))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_lines(layout: Layout) -> list[str]:
    ingest, finetune, evaluate = (_read(layout, s) for s in ("ingest", "finetune", "evaluate"))
    lo, hi = evaluate["accuracy_ci"]
    lines = [
        "Graft summary",
        f"  data       {ingest.get('source', '?')}: "
        + ", ".join(f"{ingest.get(f'n_{s}', '?')} {s}" for s in ("train", "val", "test"))
        + f" images, {evaluate.get('n_classes', len(evaluate.get('class_names', [])))} classes",
        f"  strategy   {finetune.get('strategy')} (val accuracy "
        f"{_pct(finetune['val_accuracy']) if finetune.get('val_accuracy') is not None else 'n/a'})",
        f"  test acc   {_pct(evaluate['accuracy'])}  (95% CI {_pct(lo)}–{_pct(hi)}), "
        f"macro-F1 {_pct(evaluate['macro_f1'])}",
    ]
    for name, acc in evaluate["baselines"].items():
        lines.append(f"  baseline   {name}: {_pct(acc)}")
    gain = evaluate["transfer_gain"]
    lines.append(f"  transfer   gain over the best baseline: {100 * gain:+.1f} points")
    if evaluate["negative_transfer"]:
        lines.append("  WARNING: NEGATIVE TRANSFER: a baseline trained from scratch beats the model")
    for path in (layout.model, layout.onnx):
        if path.exists():
            lines.append(f"  model      {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return lines
