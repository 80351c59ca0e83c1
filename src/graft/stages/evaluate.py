"""Stage `evaluate`: score the model on the test split, beside baselines that had no pretraining.

Inputs: models/model.pt, data/prepared/ (manifest + images). Outputs: metrics/evaluate.json
(everything), metrics/scores.json (the headline figures `dvc metrics show` prints),
reports/evaluate.md, plots/confusion.csv (long format for `dvc plots`), plots/confusion.png and
models/baseline.pt (the best baseline's network).

A model whose backbone is the frozen pretrained one (a feature strategy, an ensemble) is scored
from the embedding store, where the features stage already put every test image
(graft.embeddings.scoring); any other is scored end to end from the image files with its own
preprocessing. Two baselines
learn from the same training images (graft.evaluation.baselines), trained once per manifest and
baseline settings (graft.evaluation.baseline_cache: a rerun that changed only the model reuses
them). All figures carry 95% bootstrap
intervals computed on the same resamples for every contender (graft.evaluation.compare), and the
verdict says whether transfer learning beat the best baseline (`negative_transfer` when it did
not). The model's accuracy is also given without the test images that nearly copy a training
image (reports/near_duplicates.csv, written by the audit stage; graft.labels.duplicates).

`evaluate.on_negative_transfer` decides what happens then: `warn` reports it, `fail` exits
non-zero after writing everything, `use_baseline` records `"deployed": "baseline"` so that the
export stage publishes models/baseline.pt instead of the transferred model (the report says so).
The confusion matrix and per-class scores are always the transferred model's; the deployed
baseline's headline figures are in `baselines_scores`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from graft.core.config import Params
from graft.core.device import pick_device
from graft.core.files import sha256_file, write_json, write_text
from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, encode_labels, origins, read_manifest
from graft.embeddings.scoring import logits_from_store
from graft.evaluation.baseline_cache import cached_baselines
from graft.evaluation.compare import compare
from graft.evaluation.plots import write_confusion
from graft.evaluation.report import headline, report_markdown, verdict
from graft.labels.leakage import without_near_copies
from graft.models import scratch
from graft.models.checkpoint import load_checkpoint, save_checkpoint
from graft.models.inference import run_model


class EvaluateError(ValueError):
    """Inputs the evaluate stage cannot score; the message names the file and the problem."""


class NegativeTransferError(EvaluateError):
    """`evaluate.on_negative_transfer: fail` and a baseline beat the model (outputs are written)."""


def run(params: Params, layout: Layout) -> dict[str, Any]:
    """Score the model and the baselines on the test split; write every output; return metrics."""
    p = params.evaluate
    df = read_manifest(layout.manifest)
    model, meta = load_checkpoint(layout.model, head_only=True)
    names: list[str] = list(meta["class_names"])
    test = df[df["split"] == "test"]
    if test.empty:
        raise EvaluateError(f"{layout.manifest}: no test images (split 'test'); nothing to score")
    y_test = encode_labels(test["label"], names, layout.manifest, "test", "the model")

    device = pick_device()
    logits = logits_from_store(model, meta, layout, test)  # a frozen backbone: no image pass
    scored_from = "embedding store" if logits is not None else "images"
    if logits is None:
        model, meta = load_checkpoint(layout.model)  # the whole network, to see the images
        logits = run_model(model, absolute_paths(test, layout.manifest), meta["preprocessing"],
                           p.batch_size, device, label="evaluate: the model on the test images")
    probas = {"model": torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()}
    trained, reused = cached_baselines(p, df, layout.manifest, names, device, layout.baselines)
    probas |= {name: result.proba for name, result in trained.items()}
    result = compare(y_test, probas, names, p.bootstrap, p.seed)
    result["baselines_info"] = {name: r.info for name, r in trained.items()}
    result["baselines_reused"] = reused  # kept from an earlier run with the same inputs
    result |= without_near_copies(layout.near_duplicates, origins(test, layout.manifest), y_test,
                                  probas["model"], p.bootstrap, p.seed)
    result["on_negative_transfer"] = p.on_negative_transfer
    use_baseline = result["negative_transfer"] and p.on_negative_transfer == "use_baseline"
    result["deployed"] = "baseline" if use_baseline else "model"
    result["deployed_network"] = result["best_baseline"] if use_baseline else meta["backbone"]
    result["model_sha256"] = sha256_file(layout.model)  # which model.pt this verdict is about
    result["scored_from"] = scored_from
    result["n_train"], result["n_val"] = (int((df["split"] == s).sum()) for s in ("train", "val"))

    best = result["best_baseline"]
    save_checkpoint(layout.baseline_model, trained[best].model, best, names,
                    scratch.preprocessing(p.baseline_image_size),
                    network={"kind": "baseline", "name": best, "size": p.baseline_image_size},
                    strategy=f"baseline:{best}", params={"evaluate": dataclasses.asdict(p)},
                    test_accuracy=result["baselines"][best], **trained[best].info)
    write_confusion(layout.plot("confusion.csv"), layout.plot("confusion.png"), names, y_test,
                    probas["model"].argmax(axis=1), result["confusion"])
    write_text(layout.report("evaluate.md"), report_markdown(result))
    write_json(layout.metrics("evaluate"), result)
    write_json(layout.metrics("scores"), headline(result))
    if p.on_negative_transfer == "fail" and result["negative_transfer"]:
        # after the outputs are written: the evidence stays on disk, and DVC/CI stop before
        # the export stage publishes a model that lost
        raise NegativeTransferError(
            f"{layout.model}: {verdict(result)}; evaluate.on_negative_transfer is 'fail' "
            f"(see {layout.report('evaluate.md')}; set it to 'warn' to continue anyway)")
    return result
