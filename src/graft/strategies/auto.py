"""The `auto` strategy: search the cheap feature strategies, try `lp_ft` when the budget allows,
refit the winner as an ordinary strategy.

Candidates, simplest first (a tie keeps the earlier one): every registered feature strategy
(graft.strategies: linear_probe, prototype, svm) with every setting it offers (`settings`: each C
of `c_grid`, each kernel/C/γ of the svm grids), each under the feature normalisations of
`AUTO_NORMS`. Each is one fixed setting, scored by
- accuracy on the validation rows after fitting on the training rows, when val has at least
  `MIN_VAL_PER_CLASS` images of every class;
- otherwise mean accuracy over repeated stratified k-fold on train + val (`REPEATS` × up to
  `FOLDS` folds): with 1–4 validation images per class one image is 20–100% of a class's score,
  so val alone cannot separate settings whose true accuracies differ by a few points.
Then `lp_ft` when val scoring applies, the backbone supports it and the rest of `budget_s` fits
its estimated time (from its first epoch). The best feature candidate is refitted on train + val;
a winning lp_ft network is kept as trained (on train only: its val rows chose the epoch).
metrics/finetune.json records every candidate's score under `auto`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

from graft.core.config import FinetuneParams
from graft.strategies.base import FeatureData, FeatureStrategy, Fit, Inputs, Strategy
from graft.strategies.registry import get_strategy, strategy_names
from graft.strategies.training import BudgetExceeded

AUTO_NORMS = ("none", "center_l2")  # raw embeddings, and SimpleShot's CL2N
MIN_VAL_PER_CLASS = 5  # fewer validation images of some class: score by repeated k-fold
FOLDS, REPEATS = 5, 3  # repeated stratified k-fold (fewer folds when a class has fewer images)
NETWORK_CANDIDATE = "lp_ft"  # the network strategy auto tries when the budget allows


class AutoError(ValueError):
    """The auto search could not score any candidate."""


class Auto(Strategy):
    """`finetune.strategy: auto`."""

    def fit(self, p: FinetuneParams, inputs: Inputs, budget_s: float | None = None) -> Fit:
        started = time.perf_counter()
        method = scoring_method(inputs.data)
        scored = score_candidates(feature_candidates(p), inputs.data, p, method,
                                  started + p.budget_s)
        network, out = self._try_network(p, inputs, method, p.budget_s - (
            time.perf_counter() - started))
        scored.append(network)
        chosen = scored[best(scored)]
        if chosen is not network:
            narrowed = as_params(p, chosen)
            out = get_strategy(narrowed.strategy).fit(narrowed, inputs)
        out.report["auto"] = {"chosen": chosen, "selection": method, "budget_s": p.budget_s,
                              "search_seconds": round(time.perf_counter() - started, 2),
                              "candidates": scored}
        return out

    def _try_network(self, p: FinetuneParams, inputs: Inputs, method: str, remaining: float
                     ) -> tuple[dict[str, Any], Fit | None]:
        """lp_ft's candidate row (its score, or why it was skipped) and its Fit when it ran."""
        row: dict[str, Any] = {"strategy": NETWORK_CANDIDATE}
        strategy = get_strategy(NETWORK_CANDIDATE)
        reason = strategy.unsupported(inputs.backbone)
        if reason:
            row["skipped"] = f"{NETWORK_CANDIDATE} {reason}"
        elif method != "val":
            row["skipped"] = (f"val has < {MIN_VAL_PER_CLASS} images of some class and "
                              "repeated k-fold of a network is beyond the budget")
        elif remaining <= 0:
            row["skipped"] = "budget_s spent"
        else:
            t0 = time.perf_counter()
            try:
                out = strategy.fit(dataclasses.replace(p, strategy=NETWORK_CANDIDATE), inputs,
                                   budget_s=remaining)
            except BudgetExceeded as exc:
                row["skipped"] = str(exc)
            else:
                row |= {"score": out.val_accuracy, "seconds": round(time.perf_counter() - t0, 2)}
                return row, out
        return row, None


def feature_candidates(p: FinetuneParams) -> list[dict[str, Any]]:
    """Every feature setting auto tries, as {'strategy', 'feature_norm', …hyperparameters}."""
    out: list[dict[str, Any]] = []
    for norm in AUTO_NORMS:
        for name in strategy_names("features"):
            out += [{"strategy": name, "feature_norm": norm, **setting}
                    for setting in get_strategy(name).settings(p)]
    return out


def scoring_method(data: FeatureData) -> str:
    """'val' when every class has MIN_VAL_PER_CLASS validation images, else 'repeated_cv'."""
    val_counts = np.bincount(data.y[~data.is_train], minlength=data.n_classes)
    return "val" if val_counts.min() >= MIN_VAL_PER_CLASS else "repeated_cv"


def score_candidates(settings: list[dict[str, Any]], data: FeatureData, p: FinetuneParams,
                     method: str, deadline: float) -> list[dict[str, Any]]:
    """Each setting with its 'score' (held-out accuracy) and 'seconds'; once time.perf_counter()
    passes `deadline`, the remaining ones get 'skipped' instead."""
    splits = _splits(data, p.seed, method)
    scored = []
    for setting in settings:
        if time.perf_counter() > deadline:
            scored.append({**setting, "skipped": "budget_s spent"})
            continue
        t0 = time.perf_counter()
        narrowed = as_params(p, setting)
        strategy = get_strategy(setting["strategy"])
        assert isinstance(strategy, FeatureStrategy)
        correct = total = 0
        for tr, te in splits:
            fold = data.subset(np.concatenate([tr, te]), np.arange(len(tr) + len(te)) < len(tr))
            correct += round(strategy.score(narrowed, fold) * len(te))
            total += len(te)
        scored.append({**setting, "score": correct / total,
                       "seconds": round(time.perf_counter() - t0, 2)})
    return scored


def best(scored: list[dict[str, Any]]) -> int:
    """Index of the highest score; ties keep the earlier (simpler) candidate."""
    ranked = [i for i, s in enumerate(scored) if "score" in s]
    if not ranked:
        raise AutoError("auto: finetune.budget_s ran out before any candidate was scored")
    return max(ranked, key=lambda i: (scored[i]["score"], -i))


def as_params(p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
    """`p` narrowed to one candidate, for scoring it and for the final refit."""
    name = setting["strategy"]
    strategy = get_strategy(name)
    if not isinstance(strategy, FeatureStrategy):
        return dataclasses.replace(p, strategy=name)
    hyper = {k: v for k, v in setting.items() if k not in ("strategy", "feature_norm")}
    return strategy.narrow(dataclasses.replace(p, feature_norm=setting["feature_norm"]), hyper)


def _splits(data: FeatureData, seed: int, method: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if method == "val":
        return [(np.flatnonzero(data.is_train), np.flatnonzero(~data.is_train))]
    smallest = int(np.bincount(data.y, minlength=data.n_classes).min())
    if smallest < 2:
        raise AutoError("auto: a class has fewer than 2 train + val images; cannot "
                        "cross-validate (add images or pick a strategy)")
    folds = RepeatedStratifiedKFold(n_splits=min(FOLDS, smallest), n_repeats=REPEATS,
                                    random_state=seed)
    return list(folds.split(np.zeros(len(data.y)), data.y))
