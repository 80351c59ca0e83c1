"""The finetune stage: graft a classifier for the manifest's classes onto the pretrained backbone.

Strategies (`finetune.strategy`):

- `linear_probe`: logistic regression on the cached embeddings (features stage), C chosen on the
  validation rows, then refitted on train + validation rows with that C. The refit uses every
  label we have, which matters most when there are only a few per class; the reported
  val_accuracy is therefore the one measured before the refit (the refitted model has seen the
  validation rows). The standardisation is folded into the network's Linear head, so
  models/model.pt maps an image to logits with no side files.
- `svm` and `prototype`: heads fitted on the cached embeddings by graft.feature_fit (one-vs-rest
  SVMs, linear or RBF, or cosine nearest class mean), shipped as graft.heads layers. With
  `feature_norm` (center, l2) the linear probe and these heads normalise the embeddings first,
  and the saved head does the same.
- `finetune`: the network itself is trained (see graft.training) from a zero-initialised head
  (all logits 0 at the start, so the first updates move the head only: its gradient into the
  backbone is Wᵀ(p − y) = 0), head at `lr`, backbone at `backbone_lr`.
- `lp_ft` (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): first the linear
  probe, fitted to convergence on the training rows only (C chosen on val; the validation rows
  stay unseen for early stopping), then every trainable weight, the head included, fine-tuned at
  the small `backbone_lr`. Starting from a good head keeps the first gradients from distorting
  the pretrained features, which is what a random head does.
- `ensemble`: one member per pair of `ensemble_backbones` × `ensemble_strategies` (feature
  strategies), each fitted exactly as that strategy alone on that backbone's cached embeddings;
  the saved network (graft.ensemble) averages the members' probabilities. Its val_accuracy is
  null (every member is refitted on train + val); metrics list each member's own held-out score.
- `auto`: graft.auto scores the feature strategies (and their settings) on val, or by repeated
  stratified k-fold on train + val when val is small, then tries lp_ft when the rest of
  `budget_s` fits its estimated time (from its first epoch); the best is refitted as that
  strategy. metrics/finetune.json records every candidate's score under `auto`.

Outputs: models/model.pt, metrics/finetune.json and plots/finetune.csv (per epoch; for
linear_probe one row per C tried), each written atomically: a crash leaves the previous ones.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from graft import auto, ensemble
from graft.backbones import BACKBONES, TIMM_PREFIX, create_model, get_spec, is_backbone, is_timm
from graft.checkpoint import save_checkpoint
from graft.config import ConfigError, FinetuneParams, Params
from graft.feature_fit import candidates, fit_strategy
from graft.features import check_params as check_features
from graft.features import load_embeddings, resolve_backbone, weights_dir, with_backbone
from graft.files import write_csv, write_json
from graft.heads import head_logits, head_spec, install_head, last_linear, norm_parts, normalise
from graft.images import Preprocessing
from graft.inference import pick_device
from graft.layout import Layout
from graft.manifest import absolute_paths, class_names, read_manifest
from graft.probe import Selection, fit_probe, select_c
from graft.training import BudgetExceeded, Data, History, train

log = logging.getLogger(__name__)

PROBE_CSV = ("step", "C", "val_accuracy")
FEATURE_HEADS = ("svm", "prototype")  # graft.feature_fit strategies
FEATURE_STRATEGIES = ("linear_probe", *FEATURE_HEADS)  # fitted on cached embeddings
NETWORK = ("finetune", "lp_ft")  # strategies that train the network (graft.training)
EPOCH_CSV = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")


class FinetuneError(ValueError):
    """A manifest the stage cannot train on; the message names the file."""


@dataclasses.dataclass
class _Outcome:
    model: torch.nn.Module
    val_accuracy: float | None
    train_accuracy: float
    csv_header: tuple[str, ...]
    csv_rows: list[list]
    history: History | None = None
    head_spec: dict | None = None  # graft.heads spec when the head is not a plain Linear
    setting: dict | None = None  # svm/prototype: the chosen setting and its temperature
    candidates: list[dict] | None = None  # svm/prototype: every setting tried, with val score
    selection: str = "val"
    probe_selection: Selection | None = None  # the C chosen for a linear_probe / lp_ft head
    auto: dict | None = None  # the auto search: every candidate and the chosen one
    network: dict | None = None  # graft.checkpoint `network` entry (ensemble)
    members: list[dict] | None = None  # ensemble: each member and its held-out score


@dataclasses.dataclass
class _Inputs:
    """What every strategy fits on: the train + val rows, their labels and embeddings."""

    rows: pd.DataFrame
    y: np.ndarray
    is_train: np.ndarray
    feats: np.ndarray
    views: np.ndarray | None  # features.views augmented views of each row (graft.views)
    backbone: str
    n_classes: int
    pre: Preprocessing
    device: torch.device
    images: Callable[[], torch.Tensor]  # uint8 (N, 3, S, S), decoded on the first call only
    features_of: Callable[[str], tuple[np.ndarray, np.ndarray | None]]  # another backbone's
    weights_dir: Path  # features.weights_dir: the pretrained weights of `timm:` backbones


def run(params: Params, layout: Layout) -> dict:
    """Fit `params.finetune.strategy` on the manifest's train (+ val) rows; write the model,
    metrics/finetune.json and plots/finetune.csv; return the metrics."""
    started = time.perf_counter()
    p = params.finetune
    check_params(p, str(layout.params))
    check_features(params.features, str(layout.params))
    df = read_manifest(layout.manifest)
    rows = df.loc[df["split"].isin(["train", "val"])].reset_index(drop=True)
    classes = class_names(df)
    y = _label_indices(rows, classes, str(layout.manifest))
    is_train = (rows["split"] == "train").to_numpy(copy=True)  # writable: torch indexes with it
    backbone = resolve_backbone(params, layout)  # features.backbone auto: the stage's choice
    check_network_backbone(p, backbone, str(layout.params))
    pre = get_spec(backbone).preprocessing(params.features.image_size)
    images = functools.cache(lambda: _decode(absolute_paths(rows, layout.manifest), pre,
                                             params.validate.max_pixels))
    def features_of(name: str) -> tuple[np.ndarray, np.ndarray | None]:
        named = with_backbone(params, name)
        return load_embeddings(layout, named, rows)

    inputs = _Inputs(rows, y, is_train, *features_of(backbone), backbone, len(classes), pre,
                     pick_device(), images, features_of, weights_dir(params, layout))
    fit = {"auto": _auto, "ensemble": _ensemble}.get(p.strategy, _fit)
    out = fit(p, inputs)
    if out.network:  # the ensemble: a name for reports; the members are in `network`
        backbone = "ensemble:" + "+".join(p.ensemble_backbones)
    selection = out.probe_selection or Selection(None, None, None, [])
    history, device = out.history, inputs.device
    fitted = auto.as_params(p, out.auto["chosen"]) if out.auto else p  # what was fitted
    metrics = {
        "strategy": p.strategy,
        "val_accuracy": out.val_accuracy,
        "train_accuracy": out.train_accuracy,
        "epochs_run": history.epochs_run if history else 0,
        "best_epoch": history.best_epoch if history else None,
        "n_train": int(is_train.sum()),
        "n_val": int((~is_train).sum()),
        "n_classes": len(classes),
        "C": selection.C,
        "C_selection": selection.method,  # val | cv (no val rows) | single | default (1-shot)
        "feature_norm": fitted.feature_norm if fitted.strategy not in NETWORK else "none",
        **({"setting": out.setting, "candidates": out.candidates} if out.setting else {}),
        **({"auto": out.auto} if out.auto else {}),
        **({"members": out.members} if out.members else {}),
        "seconds": round(time.perf_counter() - started, 2),
        "device": device.type,
    }
    save_checkpoint(layout.model, out.model.cpu(), backbone, classes, pre, head=out.head_spec,
                    network=out.network, strategy=p.strategy, fitted_strategy=fitted.strategy,
                    params=dataclasses.asdict(fitted), C=selection.C,
                    val_accuracy=out.val_accuracy, epochs_run=metrics["epochs_run"],
                    best_epoch=metrics["best_epoch"])
    write_csv(layout.plots / "finetune.csv", out.csv_header, out.csv_rows)
    write_json(layout.metrics("finetune"), metrics)
    return metrics


def _fit(p: FinetuneParams, d: _Inputs, budget_s: float | None = None) -> _Outcome:
    """Fit one (non-auto) strategy on a fresh pretrained network."""
    model = create_model(d.backbone, d.n_classes, weights_dir=d.weights_dir)
    y, is_train, feats, views = d.y, d.is_train, d.feats, d.views
    if p.strategy in FEATURE_HEADS:
        out = _feature_head(model, feats, y, is_train, p, views)
        out.probe_selection = Selection(out.setting.get("C"), out.selection, out.val_accuracy, [])
        return out
    if p.strategy == "linear_probe":
        mean, l2 = norm_parts(p.feature_norm, feats[is_train])
        z = normalise(feats, mean, l2)
        zv = None if views is None else normalise(views, mean, l2)
        selection = select_c(z[is_train], y[is_train], z[~is_train], y[~is_train], p.c_grid,
                             p.class_weight, d.n_classes, p.seed,
                             None if zv is None else zv[is_train])
        return _linear_probe(model, z, y, is_train, selection, p, mean, zv)
    selection = None
    if p.strategy == "lp_ft":
        selection = select_c(feats[is_train], y[is_train], feats[~is_train], y[~is_train],
                             p.c_grid, p.class_weight, d.n_classes, p.seed)
        probe = fit_probe(feats[is_train], y[is_train], selection.C, p.class_weight, d.n_classes)
        probe.fold_into(model.classifier)
    else:  # finetune: a zero head, every class equally likely at the start
        torch.nn.init.zeros_(model.classifier.weight)
        torch.nn.init.zeros_(model.classifier.bias)
    images = d.images()
    data = Data(images[is_train], torch.from_numpy(y[is_train]),
                images[~is_train], torch.from_numpy(y[~is_train]))
    history = train(model, data, d.pre, p, d.device, d.n_classes, budget_s)
    csv_rows = [[row[k] for k in EPOCH_CSV] for row in history.rows]
    return _Outcome(model, history.best_val_accuracy, history.train_accuracy, EPOCH_CSV,
                    csv_rows, history, probe_selection=selection)


def _auto(p: FinetuneParams, d: _Inputs) -> _Outcome:
    """Score the feature candidates, then lp_ft if the budget allows; refit the best feature
    candidate on train + val, or keep a winning lp_ft network as trained (on train only: its
    val rows chose the epoch, as in the plain lp_ft strategy)."""
    started = time.perf_counter()
    method = auto.scoring_method(d.y, d.is_train, d.n_classes)
    scored = auto.score_candidates(auto.feature_candidates(p), d.feats, d.y, d.is_train,
                                   d.n_classes, p, method, started + p.budget_s, d.views)
    lp_ft: dict = {"strategy": "lp_ft"}
    lp_out = None
    remaining = p.budget_s - (time.perf_counter() - started)
    if is_timm(d.backbone):  # graft.trainable's freezing and llrd know EfficientNet-Lite only
        lp_ft["skipped"] = f"lp_ft needs an EfficientNet-Lite backbone, not {d.backbone}"
    elif method != "val":
        lp_ft["skipped"] = (f"val has < {auto.MIN_VAL_PER_CLASS} images of some class and "
                            "repeated k-fold of a network is beyond the budget")
    elif remaining <= 0:
        lp_ft["skipped"] = "budget_s spent"
    else:
        t0 = time.perf_counter()
        try:
            lp_out = _fit(dataclasses.replace(p, strategy="lp_ft"), d, budget_s=remaining)
            lp_ft |= {"score": lp_out.val_accuracy,
                      "seconds": round(time.perf_counter() - t0, 2)}
        except BudgetExceeded as exc:
            lp_ft["skipped"] = str(exc)
    scored.append(lp_ft)
    chosen = scored[auto.best(scored)]
    out = lp_out if chosen is lp_ft else _fit(auto.as_params(p, chosen), d)
    out.auto = {"chosen": chosen, "selection": method, "budget_s": p.budget_s,
                "search_seconds": round(time.perf_counter() - started, 2), "candidates": scored}
    return out


def _ensemble(p: FinetuneParams, d: _Inputs) -> _Outcome:
    """Fit every member (graft.ensemble) and assemble them into one network."""
    members, heads, feats = [], [], {}
    for name in p.ensemble_backbones:
        feats[name], views = d.features_of(name)
        for strategy in p.ensemble_strategies:
            out = _fit(dataclasses.replace(p, strategy=strategy),
                       dataclasses.replace(d, feats=feats[name], views=views, backbone=name))
            heads.append(out.model.classifier)
            setting = out.setting or {"C": out.probe_selection.C}
            members.append({"backbone": name, "strategy": strategy, "head": out.head_spec,
                            "val_accuracy": out.val_accuracy,
                            "selection": out.probe_selection.method, "setting": setting})
    model = ensemble.assemble(members, heads, weights_dir=d.weights_dir)
    logits = model.head_logits({name: f[d.is_train] for name, f in feats.items()})
    train_accuracy = float((logits.argmax(1) == d.y[d.is_train]).mean())
    rows = [[i, m["backbone"], m["strategy"], m["val_accuracy"]] for i, m in enumerate(members)]
    return _Outcome(model, None, train_accuracy, ("member", "backbone", "strategy",
                                                  "val_accuracy"), rows,
                    network=ensemble.spec(members), members=members)


def _linear_probe(model: torch.nn.Module, feats: np.ndarray, y: np.ndarray, is_train: np.ndarray,
                  selection: Selection, p: FinetuneParams, mean: np.ndarray | None,
                  views: np.ndarray | None = None) -> _Outcome:
    """Refit on train + val with the chosen C (all the labels; see the module docstring).
    `feats` are already normalised (`feature_norm`); the head repeats that normalisation."""
    n_classes = model.classifier.out_features
    probe = fit_probe(feats, y, selection.C, p.class_weight, n_classes, views)
    spec = head_spec(p.feature_norm)
    head = install_head(model, spec)
    if mean is not None:
        with torch.no_grad():
            head[0].mean.copy_(torch.as_tensor(mean))
    probe.fold_into(last_linear(head))
    train_accuracy = float((probe.predict(feats[is_train]) == y[is_train]).mean())
    csv_rows = [[i, c, acc] for i, (c, acc) in enumerate(selection.scores)]
    return _Outcome(model, selection.accuracy, train_accuracy, PROBE_CSV, csv_rows,
                    head_spec=spec, probe_selection=selection)


def _feature_head(model: torch.nn.Module, feats: np.ndarray, y: np.ndarray, is_train: np.ndarray,
                  p: FinetuneParams, views: np.ndarray | None = None) -> _Outcome:
    """svm or prototype (graft.feature_fit), installed as the network's classifier."""
    n_classes = model.classifier.out_features
    settings = candidates(p.strategy, p.svm_kernels, p.svm_c_grid, p.svm_gamma_grid)
    fitted = fit_strategy(p.strategy, feats, y, is_train, n_classes, p.feature_norm, settings,
                          p.class_weight, p.seed, views)
    model.classifier = fitted.head
    logits = head_logits(fitted.head, feats[is_train])
    train_accuracy = float((logits.argmax(1) == y[is_train]).mean())
    header = ("step", "kernel", "C", "gamma_x", "val_accuracy")
    rows = [[i, s.get("kernel", ""), s.get("C", ""), s.get("gamma_x", ""), s["val_accuracy"]]
            for i, s in enumerate(fitted.scores)]
    return _Outcome(model, fitted.val_accuracy, train_accuracy, header, rows,
                    head_spec=fitted.spec, setting=fitted.setting, candidates=fitted.scores,
                    selection=fitted.selection)


def check_params(p: FinetuneParams, source: str = "params") -> None:
    """Ranges the type check in graft.config cannot express; raises ConfigError naming the key."""
    rules = [
        ("c_grid", bool(p.c_grid) and all(c > 0 for c in p.c_grid), "a non-empty list of C > 0"),
        ("epochs", p.epochs >= 1, "≥ 1"),
        ("batch_size", p.batch_size >= 1, "≥ 1"),
        ("lr", p.lr > 0, "> 0"),
        ("backbone_lr", p.backbone_lr >= 0, "≥ 0"),
        ("weight_decay", p.weight_decay >= 0, "≥ 0"),
        ("freeze_blocks", 0 <= p.freeze_blocks <= 7, "between 0 and 7 (EfficientNet-Lite blocks)"),
        ("l2sp", p.l2sp >= 0, "≥ 0"),
        ("patience", p.patience >= 1, "≥ 1"),
        ("feature_norm", p.strategy not in NETWORK or p.feature_norm == "none",
         "none with strategies finetune and lp_ft (it applies to the feature strategies only)"),
        ("llrd", 0 < p.llrd <= 1, "in (0, 1]"),
        ("label_smoothing", 0 <= p.label_smoothing < 1, "in [0, 1)"),
        ("mixup", p.mixup >= 0, "≥ 0"),
        ("cutmix", p.cutmix >= 0, "≥ 0"),
        ("budget_s", p.budget_s > 0, "> 0"),
        ("ensemble_backbones", bool(p.ensemble_backbones)
         and all(map(is_backbone, p.ensemble_backbones))
         and len({get_spec(b).mean + get_spec(b).std for b in p.ensemble_backbones}) == 1,
         f"a non-empty list of {', '.join(BACKBONES)} or {TIMM_PREFIX}<name> (one "
         "preprocessing: mean and std)"),
        ("ensemble_strategies", bool(p.ensemble_strategies)
         and set(p.ensemble_strategies) <= set(FEATURE_STRATEGIES),
         f"a non-empty list of {', '.join(FEATURE_STRATEGIES)}"),
        ("svm_kernels", bool(p.svm_kernels) and set(p.svm_kernels) <= {"linear", "rbf"},
         "a non-empty list of linear, rbf"),
        ("svm_c_grid", bool(p.svm_c_grid) and all(c > 0 for c in p.svm_c_grid),
         "a non-empty list of C > 0"),
        ("svm_gamma_grid", bool(p.svm_gamma_grid) and all(g > 0 for g in p.svm_gamma_grid),
         "a non-empty list of multipliers > 0"),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{source}: finetune.{key} = {getattr(p, key)!r} must be {rule}")


def check_network_backbone(p: FinetuneParams, backbone: str, source: str = "params") -> None:
    """The network strategies freeze and decay EfficientNet-Lite blocks (graft.trainable): a
    `timm:` backbone gets the feature strategies only (auto skips lp_ft for it)."""
    if p.strategy in NETWORK and is_timm(backbone):
        raise ConfigError(f"{source}: finetune.strategy = {p.strategy!r} needs an "
                          f"EfficientNet-Lite backbone ({', '.join(BACKBONES)}); the backbone "
                          f"is {backbone}: use a feature strategy (linear_probe, svm, "
                          "prototype, ensemble, auto)")


def _label_indices(rows: pd.DataFrame, classes: list[str], manifest: str) -> np.ndarray:
    if len(classes) < 2:
        raise FinetuneError(f"{manifest}: training rows have {len(classes)} class(es) "
                            f"{classes}; a classifier needs at least 2")
    unknown = sorted(set(rows["label"]) - set(classes))
    if unknown:
        raise FinetuneError(f"{manifest}: validation label(s) {unknown} have no training images")
    index = {c: i for i, c in enumerate(classes)}
    return np.array(rows["label"].map(index), dtype=np.int64)  # a copy: writable


def _decode(paths: list, pre: Preprocessing, max_pixels: int) -> torch.Tensor:
    """Every image decoded once, resized and cropped: uint8 (N, 3, S, S), ~150 KB each at 224."""
    return torch.from_numpy(pre.load_uint8(paths, max_pixels))
