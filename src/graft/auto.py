"""The `auto` strategy's search over the cheap feature strategies: the candidate settings, how each
is scored, and which one wins. graft.finetune runs the search, adds `lp_ft` when the budget
allows, and refits the winner as an ordinary strategy.

Candidates, simplest first (a tie keeps the earlier one): linear_probe with every C of `c_grid`,
prototype, svm with every kernel/C/γ of the svm grids, each under the feature normalisations of
`AUTO_NORMS`. Each is one fixed setting, scored by
- accuracy on the validation rows after fitting on the training rows, when val has at least
  `MIN_VAL_PER_CLASS` images of every class;
- otherwise mean accuracy over repeated stratified k-fold on train + val (`REPEATS` × up to
  `FOLDS` folds): with 1–4 validation images per class one image is 20–100% of a class's score,
  so val alone cannot separate settings whose true accuracies differ by a few points.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

from graft.config import FinetuneParams
from graft.feature_fit import candidates, fit_strategy
from graft.heads import norm_parts, normalise
from graft.probe import fit_probe

AUTO_NORMS = ("none", "center_l2")  # raw embeddings, and SimpleShot's CL2N
MIN_VAL_PER_CLASS = 5  # fewer validation images of some class: score by repeated k-fold
FOLDS, REPEATS = 5, 3  # repeated stratified k-fold (fewer folds when a class has fewer images)


class AutoError(ValueError):
    """The auto search could not score any candidate."""


def feature_candidates(p: FinetuneParams) -> list[dict[str, Any]]:
    """Every feature setting auto tries, as {'strategy', 'feature_norm', …hyperparameters}."""
    out: list[dict[str, Any]] = []
    for norm in AUTO_NORMS:
        out += [{"strategy": "linear_probe", "feature_norm": norm, "C": float(c)}
                for c in sorted(p.c_grid)]
        out.append({"strategy": "prototype", "feature_norm": norm})
        out += [{"strategy": "svm", "feature_norm": norm, **s}
                for s in candidates("svm", p.svm_kernels, p.svm_c_grid, p.svm_gamma_grid)]
    return out


def scoring_method(y: np.ndarray, is_train: np.ndarray, n_classes: int) -> str:
    """'val' when every class has MIN_VAL_PER_CLASS validation images, else 'repeated_cv'."""
    val_counts = np.bincount(y[~is_train], minlength=n_classes)
    return "val" if val_counts.min() >= MIN_VAL_PER_CLASS else "repeated_cv"


def score_candidates(settings: list[dict[str, Any]], feats: np.ndarray, y: np.ndarray,
                     is_train: np.ndarray, n_classes: int, p: FinetuneParams, method: str,
                     deadline: float, views: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Each setting with its 'score' (held-out accuracy) and 'seconds'; once time.perf_counter()
    passes `deadline`, the remaining ones get 'skipped' instead."""
    splits = _splits(y, is_train, n_classes, p.seed, method)
    scored = []
    for setting in settings:
        if time.perf_counter() > deadline:
            scored.append({**setting, "skipped": "budget_s spent"})
            continue
        t0 = time.perf_counter()
        correct = total = 0
        for tr, te in splits:
            hits = held_out_hits(setting, feats, y, tr, te, n_classes, p, views)
            correct, total = correct + hits, total + len(te)
        scored.append({**setting, "score": correct / total,
                       "seconds": round(time.perf_counter() - t0, 2)})
    return scored


def held_out_hits(setting: dict[str, Any], feats: np.ndarray, y: np.ndarray, tr: np.ndarray,
                  te: np.ndarray, n_classes: int, p: FinetuneParams,
                  views: np.ndarray | None = None) -> int:
    """Correct predictions on rows `te` of `setting` fitted on rows `tr` (and their views)."""
    if setting["strategy"] == "linear_probe":
        mean, l2 = norm_parts(setting["feature_norm"], feats[tr])
        view_z = None if views is None else normalise(views[tr], mean, l2)
        probe = fit_probe(normalise(feats[tr], mean, l2), y[tr], setting["C"], p.class_weight,
                          n_classes, view_z)
        return int((probe.predict(normalise(feats[te], mean, l2)) == y[te]).sum())
    hyper = {k: v for k, v in setting.items() if k not in ("strategy", "feature_norm")}
    rows = np.concatenate([tr, te])
    is_tr = np.arange(len(rows)) < len(tr)
    fitted = fit_strategy(setting["strategy"], feats[rows], y[rows], is_tr, n_classes,
                          setting["feature_norm"], [hyper], p.class_weight, p.seed,
                          None if views is None else views[rows])
    return round(fitted.val_accuracy * len(te))  # val_accuracy: the held-out rows' accuracy


def best(scored: list[dict[str, Any]]) -> int:
    """Index of the highest score; ties keep the earlier (simpler) candidate."""
    ranked = [i for i, s in enumerate(scored) if "score" in s]
    if not ranked:
        raise AutoError("auto: finetune.budget_s ran out before any candidate was scored")
    return max(ranked, key=lambda i: (scored[i]["score"], -i))


def as_params(p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
    """`p` with the strategy and grids narrowed to `setting`, for the final refit."""
    changes: dict[str, Any] = {"strategy": setting["strategy"]}
    if "feature_norm" in setting:
        changes["feature_norm"] = setting["feature_norm"]
    if setting["strategy"] == "linear_probe":
        changes["c_grid"] = [setting["C"]]
    elif setting["strategy"] == "svm":
        changes |= {"svm_kernels": [setting["kernel"]], "svm_c_grid": [setting["C"]],
                    "svm_gamma_grid": [setting.get("gamma_x", 1.0)]}
    return dataclasses.replace(p, **changes)


def _splits(y: np.ndarray, is_train: np.ndarray, n_classes: int, seed: int,
            method: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if method == "val":
        return [(np.flatnonzero(is_train), np.flatnonzero(~is_train))]
    smallest = int(np.bincount(y, minlength=n_classes).min())
    if smallest < 2:
        raise AutoError("auto: a class has fewer than 2 train + val images; cannot "
                         "cross-validate (add images or pick a strategy)")
    folds = RepeatedStratifiedKFold(n_splits=min(FOLDS, smallest), n_repeats=REPEATS,
                                    random_state=seed)
    return list(folds.split(np.zeros(len(y)), y))
