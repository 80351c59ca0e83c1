"""The `ensemble` strategy: one member per pair of `ensemble_backbones` × `ensemble_strategies`
(registered feature strategies), each fitted exactly as that strategy alone on that backbone's
cached embeddings; the saved network (graft.models.ensemble) runs each backbone once per image
and averages the members' probabilities. Its val_accuracy is null (every member is refitted on
train + val); metrics list each member's own held-out score.
"""

from __future__ import annotations

import dataclasses

from graft.core.config import FinetuneParams
from graft.models import ensemble
from graft.strategies.base import Curve, Fit, Inputs, Strategy
from graft.strategies.registry import get_strategy

CURVE = ("member", "backbone", "strategy", "val_accuracy")  # plots/finetune.csv


class Ensemble(Strategy):
    """`finetune.strategy: ensemble`."""

    def fit(self, p: FinetuneParams, inputs: Inputs, budget_s: float | None = None) -> Fit:
        members, heads, feats = [], [], {}
        for name in p.ensemble_backbones:
            data = inputs.features_of(name)
            feats[name] = data.feats
            for strategy in p.ensemble_strategies:
                fitted = get_strategy(strategy).fit_head(
                    dataclasses.replace(p, strategy=strategy), data)
                heads.append(fitted.head)
                setting = fitted.report.get("setting") or {"C": fitted.report["C"]}
                members.append({"backbone": name, "strategy": strategy, "head": fitted.spec,
                                "val_accuracy": fitted.val_accuracy,
                                "selection": fitted.report["C_selection"], "setting": setting})
        model = ensemble.assemble(members, heads, weights_dir=inputs.weights_dir)
        logits = model.head_logits({name: f[inputs.is_train] for name, f in feats.items()})
        train_accuracy = float((logits.argmax(1) == inputs.y[inputs.is_train]).mean())
        rows = [[i, m["backbone"], m["strategy"], m["val_accuracy"]]
                for i, m in enumerate(members)]
        return Fit(model, None, train_accuracy, Curve(CURVE, rows), p,
                   network=ensemble.spec(members), report={"members": members},
                   frozen_backbone=True)
