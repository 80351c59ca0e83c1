"""The steps of the scheduled retrain loop: ingest, detect change, dvc repro, gate, promote, then
optionally git-commit dvc.lock and dvc push. graft.flows.retrain runs them in this order as
Prefect tasks (retries on the IO ones) and publishes the report as artifacts.

Order matters: the new manifest exists only after ingest, so the loop first runs
`dvc repro ingest` (DVC reruns it only if the source folder or params.ingest changed), compares
the manifest's content hash with the champion's, and stops with "no change" before any
training. Otherwise `dvc repro` (a subprocess, so DVC's cache decides what reruns; its log is
kept in reports/retrain-dvc.log) trains the challenger into models/model.pt, and the gate
(graft.lifecycle.gate) scores it and the champion on one evaluation set. The whole run holds
models/.lock: a second run waits `retrain.lock_timeout` seconds, then fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from graft.core.config import load_params, params_from_dict
from graft.core.files import sha256_file, write_json, write_text
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.store import FeaturesError
from graft.labels.suggest import SuggestError, suggest_for_project
from graft.lifecycle import gate, registry
from graft.lifecycle.report import markdown
from graft.models.checkpoint import deployed_checkpoint


class RetrainError(ValueError):
    """A step of the retrain loop failed; the message names the command or file and the log."""


def manifest_hash(df: pd.DataFrame) -> str:
    """sha256 of the sorted (content hash, label, split) rows: paths and row order do not count."""
    rows = sorted(zip(df["sha256"], df["label"], df["split"], strict=True))
    return hashlib.sha256("\n".join(",".join(r) for r in rows).encode()).hexdigest()


def compare_manifests(old: pd.DataFrame | None, new: pd.DataFrame) -> dict[str, Any]:
    """Did the data change since the champion was trained? Counts images added and removed."""
    new_hash = manifest_hash(new)
    if old is None:
        return {"changed": True, "manifest_hash": new_hash, "champion_manifest_hash": None,
                "added": len(new), "removed": 0,
                "summary": f"no champion yet; {len(new)} images"}
    old_hash = manifest_hash(old)
    added = len(set(new["sha256"]) - set(old["sha256"]))
    removed = len(set(old["sha256"]) - set(new["sha256"]))
    changed = new_hash != old_hash
    summary = (f"{added} images added, {removed} removed" + ("" if added or removed else
               ", labels or splits changed") if changed else "no new or changed images")
    return {"changed": changed, "manifest_hash": new_hash, "champion_manifest_hash": old_hash,
            "added": added, "removed": removed, "summary": summary}


def apply_overrides(layout: Layout, source: str | None, overrides: dict[str, Any] | None) -> None:
    """Write deployment parameters into params.yaml (checked first), where DVC sees them."""
    changes = dict(overrides or {})
    if source:
        changes["ingest.path"] = source
    if not changes:
        return
    raw = yaml.safe_load(layout.params.read_text(encoding="utf-8")) or {}
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise RetrainError(f"override {dotted!r}: expected section.key (e.g. finetune.lr)")
        raw.setdefault(section, {})[key] = value
    params_from_dict(raw, source=f"{layout.params} with overrides {changes}")  # raises if bad
    write_text(layout.params, yaml.safe_dump(raw, sort_keys=False))


def run_command(args: list[str], cwd: Path, log: Path) -> str:
    """Run a command with the venv's bin first on PATH (dvc.yaml calls `graft`); keep its log."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    text = f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(text + f"[exit {proc.returncode}]\n")
    if proc.returncode != 0:
        raise RetrainError(f"`{' '.join(args)}` failed (exit {proc.returncode}); log: {log}\n"
                           + (proc.stdout + proc.stderr)[-2000:])
    return text


def _dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def ingest(layout: Layout) -> None:
    run_command([_dvc(), "repro", "ingest"], layout.root, layout.retrain_log("dvc"))


def detect_change(layout: Layout) -> dict[str, Any]:
    current = registry.champion(layout.models)
    old = read_manifest(current.manifest) if current else None
    return compare_manifests(old, read_manifest(layout.manifest))


def repro(layout: Layout) -> None:
    run_command([_dvc(), "repro"], layout.root, layout.retrain_log("dvc"))


def score_and_decide(layout: Layout) -> dict[str, Any]:
    """Score champion and challenger on one evaluation set; the decision and its reasons."""
    p = load_params(layout.params).retrain
    current = registry.champion(layout.models)
    images = gate.evaluation_set(current, read_manifest(layout.manifest), layout.manifest)
    # the network export published (the baseline under on_negative_transfer: use_baseline)
    challenger = gate.score_checkpoint(deployed_checkpoint(layout), images, p.batch_size)
    champion = gate.score_checkpoint(current.model, images, p.batch_size) if current else None
    decision = gate.decide(champion, challenger, p.min_gain, p.max_class_drop)
    return {"promote": decision.promote, "reasons": decision.reasons,
            "evaluation_notes": images.notes, "challenger_score": asdict(challenger),
            "champion_score": asdict(champion) if champion else None,
            "champion_version": current.info["version"] if current else None}


def promote(layout: Layout, result: dict[str, Any]) -> str:
    """Build the new champion folder beside the old one, then swap them by renames."""
    model = deployed_checkpoint(layout)  # the network the ONNX files came from
    info = {"version": registry.version_id(model),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "accuracy": result["challenger_score"]["accuracy"],
            "n_evaluation_images": result["challenger_score"]["n"],
            "model_sha256": sha256_file(model),
            "manifest_hash": result["change"]["manifest_hash"],
            "replaced": result.get("champion_version"), "reasons": result["reasons"]}
    staged = registry.build_version(
        layout.models, model, layout.params, layout.manifest,
        others=sorted(layout.models.glob("*.onnx")),
        metrics=sorted(layout.metrics_dir.glob("*.json")), info=info)
    return registry.promote(layout.models, staged)


def git_commit(layout: Layout, message: str) -> None:
    log = layout.retrain_log("git")
    run_command(["git", "add", "dvc.lock"], layout.root, log)
    run_command(["git", "commit", "-m", message, "--", "dvc.lock"], layout.root, log)


def dvc_push(layout: Layout) -> None:
    run_command([_dvc(), "push"], layout.root, layout.retrain_log("dvc"))


def pipeline_metrics(layout: Layout) -> dict[str, Any] | None:
    """The numeric figures of metrics/evaluate.json, for the report; None before evaluation."""
    path = layout.metrics("evaluate")
    if not path.exists():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v,
                                                                                               bool)}


def next_to_label(layout: Layout) -> dict[str, Any]:
    """The report's images to label next (`graft suggest`, suggest.n of them, also written to
    reports/suggest.csv), or a note saying why there are none; nothing without
    ingest.unlabeled_path."""
    params = load_params(layout.params)
    if params.ingest.unlabeled_path is None:
        return {}
    try:
        method, table = suggest_for_project(params, layout)
    except (SuggestError, FeaturesError) as exc:
        return {"note": str(exc)}
    return {"method": method, "file": str(layout.suggestions),
            "rows": table.to_dict(orient="records")}


def write_report(layout: Layout, result: dict[str, Any]) -> str:
    """reports/retrain.{json,md} for the record; returns the markdown."""
    text = markdown(result)
    write_json(layout.report("retrain.json"), result)
    write_text(layout.report("retrain.md"), text)
    return text
