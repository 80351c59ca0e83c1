"""Stage `finetune`: graft a classifier for the manifest's classes onto the pretrained backbone.

Fits `finetune.strategy` (a graft.strategies name: linear_probe, svm, prototype on the cached
embeddings; finetune, lp_ft train the network; ensemble; auto) on the manifest's train (+ val)
rows. Outputs: models/model.pt, metrics/finetune.json and plots/finetune.csv (per epoch, or per
setting tried), each written atomically: a crash leaves the previous ones. Under torchrun
(`finetune.nproc_per_node`) every rank runs this, and rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import time

from graft.core.config import ConfigError, Params
from graft.core.distributed import is_main
from graft.core.files import write_csv, write_json
from graft.core.layout import Layout
from graft.embeddings.store import check_params as check_features
from graft.evaluation.plots import write_training_curve
from graft.models.checkpoint import save_checkpoint
from graft.strategies import check_params, get_strategy, strategy_kind
from graft.strategies.base import load_inputs


def run(params: Params, layout: Layout) -> dict:
    """Fit `params.finetune.strategy`; write the model, metrics/finetune.json and
    plots/finetune.csv; return the metrics."""
    started = time.perf_counter()
    p, source = params.finetune, str(layout.params)
    check_features(params.features, source)
    check_params(p, source)
    inputs = load_inputs(params, layout)
    strategy = get_strategy(p.strategy)
    reason = strategy.unsupported(inputs.backbone)
    if reason:
        raise ConfigError(f"{source}: finetune.strategy = {p.strategy!r} {reason}: use a "
                          "feature strategy (linear_probe, svm, prototype, ensemble, auto)")
    fit = strategy.fit(p, inputs)

    report = {"epochs_run": 0, "best_epoch": None, "C": None, "C_selection": None, **fit.report}
    fitted = fit.fitted
    metrics = {
        "strategy": p.strategy,
        "val_accuracy": fit.val_accuracy,
        "train_accuracy": fit.train_accuracy,
        "epochs_run": report.pop("epochs_run"),
        "best_epoch": report.pop("best_epoch"),
        "n_train": int(inputs.is_train.sum()),
        "n_val": int((~inputs.is_train).sum()),
        "n_classes": inputs.n_classes,
        "C": report.pop("C"),
        # val | cv (no val rows) | single | default (1-shot: nothing could be held out)
        "C_selection": report.pop("C_selection"),
        "feature_norm": "none" if strategy_kind(fitted.strategy) == "network"
        else fitted.feature_norm,
        **report,  # the strategy's own: setting and candidates, auto, members
        "seconds": round(time.perf_counter() - started, 2),
        "device": inputs.device.type,
    }
    if not is_main():  # another torchrun rank: rank 0 writes the outputs
        return metrics
    # the ensemble's name in reports; its members are in `network`
    backbone = ("ensemble:" + "+".join(p.ensemble_backbones) if fit.network
                else inputs.backbone)
    save_checkpoint(layout.model, fit.model.cpu(), backbone, inputs.classes, inputs.pre,
                    head=fit.head, network=fit.network, strategy=p.strategy,
                    fitted_strategy=fitted.strategy, params=dataclasses.asdict(fitted),
                    frozen_backbone=fit.frozen_backbone,
                    C=metrics["C"],
                    val_accuracy=fit.val_accuracy, epochs_run=metrics["epochs_run"],
                    best_epoch=metrics["best_epoch"])
    write_csv(layout.plot("finetune.csv"), fit.curve.header, fit.curve.rows)
    write_training_curve(layout.plot("training.png"), fit.curve.header, fit.curve.rows,
                         f"{p.strategy} on {backbone}")
    write_json(layout.metrics("finetune"), metrics)
    return metrics
