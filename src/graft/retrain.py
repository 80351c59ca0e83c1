"""The scheduled retrain loop as a Prefect flow `retrain`: ingest, detect change, dvc repro, gate,
promote, then optionally git-commit dvc.lock and dvc push.

Order matters: the new manifest exists only after ingest, so the flow first runs
`dvc repro ingest` (DVC reruns it only if the source folder or params.ingest changed), compares
the manifest's content hash with the champion's, and stops with "no change" before any
training. Otherwise `dvc repro` (a subprocess, so DVC's cache decides what reruns; its log is
kept in reports/retrain-dvc.log) trains the challenger into models/model.pt, and the gate
(graft.gate) scores it and the champion on one evaluation set. The whole run holds
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

import graft.prefect_defaults  # noqa: F401  (before prefect: its settings are read at import)

# isort: split
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from graft import gate, registry
from graft.checkpoint import deployed_checkpoint
from graft.config import load_params, params_from_dict
from graft.files import sha256_file, write_json, write_text
from graft.layout import Layout
from graft.manifest import read_manifest
from graft.retrain_report import commit_message, markdown, table_rows


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


@task(name="ingest", retries=2, retry_delay_seconds=10)  # reads the data source: IO, may flake
def ingest(root: str) -> None:
    layout = Layout(Path(root))
    run_command([_dvc(), "repro", "ingest"], layout.root, layout.reports / "retrain-dvc.log")


@task(name="detect-change")
def detect_change(root: str) -> dict[str, Any]:
    layout = Layout(Path(root))
    current = registry.champion_dir(layout.models)
    old = read_manifest(current / "manifest.csv") if current else None
    return compare_manifests(old, read_manifest(layout.manifest))


@task(name="dvc-repro")  # deterministic compute: a failure here is not fixed by retrying
def dvc_repro(root: str) -> None:
    layout = Layout(Path(root))
    run_command([_dvc(), "repro"], layout.root, layout.reports / "retrain-dvc.log")


@task(name="gate")
def score_and_decide(root: str) -> dict[str, Any]:
    """Score champion and challenger on one evaluation set; the decision and its reasons."""
    layout = Layout(Path(root))
    p = load_params(layout.params).retrain
    current = registry.champion_dir(layout.models)
    old = read_manifest(current / "manifest.csv") if current else None
    images = gate.evaluation_set(old, current / "testset" if current else None,
                                 read_manifest(layout.manifest), layout.manifest)
    # the network export published (the baseline under on_negative_transfer: use_baseline)
    challenger = gate.score_checkpoint(deployed_checkpoint(layout), images, p.batch_size)
    champion = (gate.score_checkpoint(current / "model.pt", images, p.batch_size)
                if current else None)
    decision = gate.decide(champion, challenger, p.min_gain, p.max_class_drop)
    return {"promote": decision.promote, "reasons": decision.reasons,
            "evaluation_notes": images.notes, "challenger_score": asdict(challenger),
            "champion_score": asdict(champion) if champion else None,
            "champion_version": registry.read_info(current)["version"] if current else None}


@task(name="promote", retries=2, retry_delay_seconds=5)
def promote(root: str, result: dict[str, Any]) -> str:
    """Build the new champion folder beside the old one, then swap them by renames."""
    layout = Layout(Path(root))
    df = read_manifest(layout.manifest)
    test = df[df["split"] == "test"]
    model = deployed_checkpoint(layout)  # the network the ONNX files came from
    files = {"model.pt": model, "params.yaml": layout.params,
             "manifest.csv": layout.manifest}
    files |= {p.name: p for p in sorted(layout.models.glob("*.onnx"))}
    files |= {f"metrics/{p.name}": p for p in sorted((layout.root / "metrics").glob("*.json"))}
    testset = {f"{sha}{Path(rel).suffix}": layout.prepared / rel
               for sha, rel in zip(test["sha256"], test["path"], strict=True)}
    info = {"version": registry.version_id(model),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "accuracy": result["challenger_score"]["accuracy"],
            "n_evaluation_images": result["challenger_score"]["n"],
            "model_sha256": sha256_file(model),
            "manifest_hash": result["change"]["manifest_hash"],
            "replaced": result.get("champion_version"), "reasons": result["reasons"]}
    staged = registry.stage(layout.models, files, info, testset)
    return registry.promote(layout.models, staged)


@task(name="git-commit", retries=2, retry_delay_seconds=5)
def git_commit(root: str, message: str) -> None:
    layout = Layout(Path(root))
    log = layout.reports / "retrain-git.log"
    run_command(["git", "add", "dvc.lock"], layout.root, log)
    run_command(["git", "commit", "-m", message, "--", "dvc.lock"], layout.root, log)


@task(name="dvc-push", retries=3, retry_delay_seconds=30)  # network to the remote
def dvc_push(root: str) -> None:
    layout = Layout(Path(root))
    run_command([_dvc(), "push"], layout.root, layout.reports / "retrain-dvc.log")


@task(name="publish", retries=2, retry_delay_seconds=5)
def publish(root: str, result: dict[str, Any]) -> None:
    """reports/retrain.{json,md} for the record; markdown + table artifacts for the Prefect UI."""
    layout = Layout(Path(root))
    text = markdown(result)
    write_json(layout.reports / "retrain.json", result)
    write_text(layout.reports / "retrain.md", text)
    create_markdown_artifact(markdown=text, key="graft-retrain", description=result["status"])
    rows = table_rows(result)
    if rows:
        create_table_artifact(table=rows, key="graft-retrain-scores",
                              description="champion vs challenger on the same images")


@flow(name="retrain", log_prints=True, persist_result=False)
def retrain(root: str = ".", source: str | None = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain on new data and promote the challenger only if it beats the champion.

    source: a new ingest.path; overrides: {"section.key": value} written into params.yaml."""
    layout = Layout(Path(root).resolve())
    root = str(layout.root)
    logger = get_run_logger()
    timeout = load_params(layout.params).retrain.lock_timeout
    with registry.lock(layout.models, timeout):
        result: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                                  "recovered": registry.recover(layout.models)}
        (layout.reports / "retrain-dvc.log").unlink(missing_ok=True)  # this run's log only
        apply_overrides(layout, source, overrides)
        ingest(root)
        result["change"] = detect_change(root)
        if not result["change"]["changed"]:
            result["status"] = "no change"
            current = registry.champion_dir(layout.models)
            result["champion_version"] = registry.read_info(current)["version"]
            logger.info("no new or changed images since the champion; nothing to train")
            publish(root, result)
            return result
        dvc_repro(root)
        result |= score_and_decide(root)
        evaluate = layout.root / "metrics" / "evaluate.json"
        if evaluate.exists():
            metrics = json.loads(evaluate.read_text(encoding="utf-8"))
            result["pipeline_metrics"] = {k: v for k, v in metrics.items()
                                          if isinstance(v, int | float) and not isinstance(v, bool)}
        for reason in result["reasons"]:
            logger.info("gate: %s", reason)
        if result["promote"]:
            result["promoted_version"] = promote(root, result)
            result["status"] = "promoted"
            p = load_params(layout.params).retrain
            if p.git_commit:
                git_commit(root, commit_message(result))
            if p.dvc_push:
                dvc_push(root)
        else:
            result["status"] = "kept champion"
        publish(root, result)
        return result
