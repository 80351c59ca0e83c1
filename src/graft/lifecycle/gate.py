"""The champion/challenger gate: score both models on one evaluation set, decide, say why.

`decide` is a pure function of two scores and the two thresholds in params.retrain; every rule
it applies leaves a sentence in `Decision.reasons`, which the retrain run publishes as its
artifact. `evaluation_set` builds the set both models are scored on: the champion's test images
(copies kept in its folder) plus the new manifest's test images, minus any image the challenger
trained on (it would flatter the challenger).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from graft.data.manifest import absolute_paths, read_manifest
from graft.lifecycle.registry import Version
from graft.models.checkpoint import load_checkpoint
from graft.models.inference import run_model


class GateError(ValueError):
    """The two models cannot be compared (no evaluation images); the message says why."""


@dataclass(frozen=True)
class Score:
    accuracy: float
    recall: dict[str, float]  # per true class present in the evaluation set
    n: int  # images scored


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    gain: float | None = None  # challenger − champion accuracy; None without a champion
    class_drops: dict[str, float] = field(default_factory=dict)  # champion − challenger recall


@dataclass(frozen=True)
class EvaluationSet:
    paths: list[Path]
    labels: list[str]
    notes: list[str]  # where the images came from, what was left out and why


def score_predictions(y_true: Sequence[str], y_pred: Sequence[str]) -> Score:
    """Accuracy and per-class recall from label names (the two models may know other classes)."""
    true, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    if len(true) == 0:
        raise GateError("no evaluation images: cannot score a model on nothing")
    recall = {str(c): float(np.mean(pred[true == c] == c)) for c in sorted(set(true.tolist()))}
    return Score(accuracy=float(np.mean(true == pred)), recall=recall, n=len(true))


def decide(champion: Score | None, challenger: Score, min_gain: float,
           max_class_drop: float) -> Decision:
    """Promote only if accuracy rises by ≥ min_gain and no class's recall falls > max_class_drop."""
    if champion is None:
        return Decision(True, [f"no champion yet: the challenger ({_pct(challenger.accuracy)} on "
                               f"{challenger.n} images) becomes the first champion"])
    gain = challenger.accuracy - champion.accuracy
    reasons = []
    gain_ok = gain >= min_gain - 1e-12  # float noise must not flip an exact tie with min_gain
    reasons.append(
        f"accuracy {_pct(champion.accuracy)} → {_pct(challenger.accuracy)} "
        f"({gain * 100:+.1f} points; needed ≥ {min_gain * 100:+.1f}): "
        + ("passes" if gain_ok else "fails"))
    drops = {c: champion.recall[c] - challenger.recall.get(c, 0.0) for c in champion.recall}
    bad = {c: d for c, d in drops.items() if d > max_class_drop + 1e-12}
    if bad:
        for c, d in sorted(bad.items(), key=lambda cd: -cd[1]):
            reasons.append(f"class {c!r}: recall {_pct(champion.recall[c])} → "
                           f"{_pct(challenger.recall.get(c, 0.0))} falls {d * 100:.1f} points "
                           f"(allowed ≤ {max_class_drop * 100:.1f}): fails")
    else:
        worst = max(drops.items(), key=lambda cd: cd[1], default=(None, 0.0))
        reasons.append(f"no class's recall falls more than {max_class_drop * 100:.1f} points "
                       f"(largest fall: {worst[0]!r}, {max(worst[1], 0.0) * 100:.1f}): passes")
    promote = gain_ok and not bad
    reasons.append("promote the challenger" if promote else "keep the champion")
    return Decision(promote, reasons, gain, drops)


def evaluation_set(champion: Version | None, manifest: pd.DataFrame,
                   manifest_path: Path) -> EvaluationSet:
    """The champion's test images plus the new test images, one per content hash.

    champion: the champion's version folder (its manifest snapshot, and the copies of its test
    images); manifest: the challenger's. Champion test images the challenger trained on (now in
    train or val) are left out and noted."""
    new_test = manifest[manifest["split"] == "test"]
    # an old test image now among the unlabelled ones was not trained on: it stays
    trained_on = set(manifest.loc[manifest["split"].isin(["train", "val"]), "sha256"])
    paths = absolute_paths(new_test, manifest_path)
    labels = new_test["label"].tolist()
    seen = set(new_test["sha256"])
    notes = [f"{len(new_test)} test images from the new manifest"]
    if champion is not None:
        snapshot = read_manifest(champion.manifest)
        old = snapshot[snapshot["split"] == "test"]
        leaked = old[old["sha256"].isin(trained_on)]
        extra = old[~old["sha256"].isin(seen | trained_on)]
        for _, row in extra.iterrows():
            paths.append(champion.test_image(row["sha256"], row["path"]))
            labels.append(row["label"])
        notes.append(f"{len(old)} champion test images: {len(old) - len(leaked) - len(extra)} "
                     f"still in the test split, {len(extra)} read from the champion's copies")
        if len(leaked):
            notes.append(f"{len(leaked)} champion test images are in the challenger's train/val "
                         "split: left out, they would flatter the challenger")
    if not paths:
        raise GateError(f"{manifest_path}: no test images for the gate to score the models on")
    return EvaluationSet(paths, labels, notes)


def score_checkpoint(model_path: Path, images: EvaluationSet, batch_size: int = 32) -> Score:
    """Load a Graft checkpoint and score it on the image files (its own preprocessing)."""
    model, meta = load_checkpoint(model_path)
    logits = run_model(model, images.paths, meta["preprocessing"], batch_size)
    names = np.asarray(meta["class_names"], dtype=object)
    return score_predictions(images.labels, names[logits.argmax(axis=1)].tolist())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"
