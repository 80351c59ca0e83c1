"""The steps of the scheduled retrain loop: ingest, detect change, dvc repro, gate, promote, then
optionally git-commit dvc.lock and dvc push. graft.retrain_flow.retrain runs them in this order as
Prefect tasks (retries on the IO ones) and publishes the report as artifacts.

Order matters: the new manifest exists only after ingest, so the loop first runs
`dvc repro ingest` (DVC reruns it only if the source folder or params.ingest changed), compares
the manifest's content hash with the champion's, and stops with "no change" before any
training. Otherwise `dvc repro` (a subprocess, so DVC's cache decides what reruns; its log is
kept in reports/retrain-dvc.log) trains the challenger into models/model.pt, and
graft.lifecycle.challenger stages a copy of it, scores that copy and the champion on one
evaluation set (graft.lifecycle.gate), and promotes exactly the copy it scored. A run's overrides
live in params.yaml only while the run does (`run_params`). The whole run holds
models/.lock: a second run waits `retrain.lock_timeout` seconds, then fails with a clear message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from graft.core.config import load_params, params_from_dict, read_yaml
from graft.core.files import write_bytes, write_json, write_text
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.store import FeaturesError
from graft.labels.suggest import SuggestError, suggest_for_project
from graft.lifecycle import registry
from graft.lifecycle.challenger import promote, score_and_decide
from graft.lifecycle.report import markdown

__all__ = ["promote", "promote_workspace", "run_params", "score_and_decide"]


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


@contextlib.contextmanager
def run_params(layout: Layout, source: str | None,
               overrides: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """params.yaml as this run's `dvc repro` must see it; yields the run's overrides (for its
    report) and gives the user's own file back, byte for byte, however the run ends.

    DVC reads params from params.yaml alone (its `${ingest.path}` dep and its staleness), so the
    overrides (`source` → ingest.path, {"section.key": value}) are written there for the run,
    as `dvc exp run -S` does. The user's bytes wait in models/.retrain-params.json meanwhile; a
    killed run's are put back when the next run starts, unless the user has edited the file
    since (theirs wins). dvc.lock then records the run's values, so a later `dvc repro` on the
    user's own params reruns what they change."""
    restore_params(layout)
    changes = dict(overrides or {})
    if source:
        changes["ingest.path"] = source
    if not changes:
        yield {}
        return
    original = layout.params.read_bytes()
    raw = read_yaml(layout.params) or {}
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise RetrainError(f"override {dotted!r}: expected section.key (e.g. finetune.lr)")
        raw.setdefault(section, {})[key] = value
    params_from_dict(raw, source=f"{layout.params} with overrides {changes}")  # raises if bad
    text = RUN_PARAMS_HEADER + yaml.safe_dump(raw, sort_keys=False)
    write_json(layout.retrain_params, {"user_text": original.decode("utf-8"),
                                       "run_sha256": hashlib.sha256(text.encode()).hexdigest()})
    write_text(layout.params, text)
    try:
        yield changes
    finally:
        restore_params(layout)


RUN_PARAMS_HEADER = ("# params of a running `graft retrain`, with its overrides; your own file "
                     "comes back when the run ends\n")


def restore_params(layout: Layout) -> bool:
    """Put the user's params.yaml back from a run's journal (if the file is still the run's);
    True when it did."""
    journal = layout.retrain_params
    if not journal.exists():
        return False
    saved = json.loads(journal.read_text(encoding="utf-8"))
    current = layout.params.read_bytes() if layout.params.exists() else b""
    restored = hashlib.sha256(current).hexdigest() == saved["run_sha256"]
    if restored:  # else the user edited it since: their edit stays
        write_bytes(layout.params, saved["user_text"].encode("utf-8"))
    journal.unlink()
    return restored


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


def promote_workspace(layout: Layout) -> dict[str, Any]:
    """`graft promote`: the exported workspace model through the same gate as a retrain run
    (staged copy, scored against the verified champion), promoted if it passes; the first
    champion of a project comes this way, after `dvc repro`."""
    p = load_params(layout.params).retrain
    with registry.lock(layout.models, p.lock_timeout):
        result: dict[str, Any] = {"recovered": registry.recover(layout.models),
                                  "change": detect_change(layout)}
        result |= score_and_decide(layout)
        if result["promote"]:
            result["promoted_version"] = promote(layout, result)
        result["status"] = "promoted" if result["promote"] else "kept champion"
    return result


def git_commit(layout: Layout, message: str) -> None:
    log = layout.retrain_log("git")
    run_command(["git", "add", "dvc.lock"], layout.root, log)
    run_command(["git", "commit", "-m", message, "--", "dvc.lock"], layout.root, log)


def dvc_push(layout: Layout) -> None:
    run_command([_dvc(), "push"], layout.root, layout.retrain_log("dvc"))


def pipeline_metrics(layout: Layout) -> dict[str, Any] | None:
    """The headline test figures of the evaluate stage (metrics/scores.json), for the report;
    None before evaluation."""
    path = layout.metrics("scores")
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


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
