"""The challenger on its way to the registry: staged as a copy, hashed, scored, and promoted as
that very copy.

Scoring models/model.pt and then copying it would let a concurrent `graft finetune` or `dvc
checkout` swap the file in between, and promote bytes nobody scored. So `score_and_decide`
first copies the challenger's whole version folder (checkpoint, ONNX set, params, manifest,
metrics, test images) into models/.champion.tmp-*, hashes the copies, checks that the ONNX set
came from that very checkpoint (graft.deploy.publish), scores the copied checkpoint, and `promote`
seals the folder only if no copy changed since it was hashed. Used by the retrain loop and by
`graft promote`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graft.core.config import load_params
from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.deploy.publish import check_set, set_files
from graft.lifecycle import gate, registry
from graft.models.checkpoint import deployed_checkpoint


class ChallengerError(ValueError):
    """No challenger that can be staged (nothing exported); the message says what to run."""


def stage_challenger(layout: Layout) -> tuple[Path, dict[str, str]]:
    """(staged folder, sha256 of each copy) of the network export published, with its ONNX set;
    the set must come from exactly that checkpoint."""
    source = deployed_checkpoint(layout)  # the baseline under on_negative_transfer: use_baseline
    onnx = set_files(layout.models)
    if not onnx or onnx[0] != layout.onnx:
        raise ChallengerError(f"{layout.onnx}: not found; run the pipeline (dvc repro) first")
    check_set(onnx, sha256_file(source))  # names the user's files; the copies are checked below
    folder = registry.build_version(
        layout.models, source, layout.params, layout.manifest, others=onnx,
        metrics=sorted(layout.metrics_dir.glob("*.json")))
    try:
        hashes = registry.hashes(folder)
        check_set(set_files(folder), hashes[registry.MODEL])
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, hashes


def score_and_decide(layout: Layout) -> dict[str, Any]:
    """Stage the challenger, score the copy and the (verified) champion on one evaluation set;
    the decision, its reasons, and the staged folder to promote (removed when not promoted)."""
    p = load_params(layout.params).retrain
    current = registry.champion(layout.models)
    if current is not None:
        registry.verify(current.folder)  # a replaced champion file is never scored
    staged, hashes = stage_challenger(layout)
    try:
        images = gate.evaluation_set(current, read_manifest(layout.manifest), layout.manifest)
        challenger = gate.score_checkpoint(staged / registry.MODEL, images, p.batch_size)
        champion = gate.score_checkpoint(current.model, images, p.batch_size) if current \
            else None
        decision = gate.decide(champion, challenger, p.min_gain, p.max_class_drop)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if not decision.promote:
        shutil.rmtree(staged, ignore_errors=True)
    return {"promote": decision.promote, "reasons": decision.reasons,
            "evaluation_notes": images.notes, "challenger_score": asdict(challenger),
            "champion_score": asdict(champion) if champion else None,
            "champion_version": current.info["version"] if current else None,
            "staged": str(staged) if decision.promote else None, "staged_hashes": hashes}


def promote(layout: Layout, result: dict[str, Any]) -> str:
    """Seal the staged folder `score_and_decide` scored (refused if a copy changed since) and
    make it the champion; returns its version."""
    staged = Path(result["staged"])
    model = staged / registry.MODEL
    info = {"version": registry.version_id(model),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "accuracy": result["challenger_score"]["accuracy"],
            "n_evaluation_images": result["challenger_score"]["n"],
            "manifest_hash": result["change"]["manifest_hash"],
            "replaced": result.get("champion_version"), "reasons": result["reasons"]}
    registry.seal(staged, info, result["staged_hashes"])
    return registry.promote(layout.models, staged)
