"""params.yaml → one frozen dataclass per stage section; unknown keys, wrong types and values out
of range raise ConfigError naming the file, the section and the key.

Every hyperparameter a stage reads comes from its own section here. The defaults below are the
documented defaults (README "Params reference"); params.yaml states them explicitly so that DVC
tracks each one. Each field's allowed range is declared beside it with `param(...)`: this is the
one place ranges are checked. Names that only a registry knows (backbones, strategies) are
checked by that registry (graft.models.backbones, graft.strategies).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graft.core.safe_yaml import YamlError, load_yaml

# finetune.feature_norm, built into the heads by graft.models.heads
FEATURE_NORMS = ("none", "center", "l2", "center_l2")
FeatureNorm = Literal[FEATURE_NORMS]  # type: ignore[valid-type]
# export.opset: verified with 17; 20 is the highest torch's TorchScript exporter writes
MIN_OPSET, MAX_OPSET = 17, 20
MAX_SEED = 2**32 - 1  # numpy and torch both accept it
MAX_BATCH = 4096


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the problem."""


def param(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, nonempty: bool = False) -> Any:
    """A dataclass field with its allowed range: bounds apply to the value, or to every item of a
    list (`nonempty`: at least one item; also a non-empty string)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    metadata = {k: v for k, v in bounds.items() if v is not None}
    if nonempty:
        metadata["nonempty"] = True
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class IngestParams:
    source: Literal["folder", "csv", "fashion-mnist", "digits"] = "fashion-mnist"
    path: str = param("/usr/share/datasets/fashion-mnist", nonempty=True)  # folder, CSV or idx
    # csv: the folder every listed image must be inside (None: the CSV's own folder), so that a
    # row cannot pull any readable file (/etc/shadow) into the data and DVC's cache
    root: str | None = param(None, nonempty=True)
    shots_per_class: int | None = param(10, ge=1)  # training images per class; None = all left
    val_per_class: int = param(10, ge=0)  # at most, and never over val_fraction of the class
    # share of a class (after test) that val may take: a folder of 15 images per class keeps 10
    # for training rather than giving val its 10 and training 2
    val_fraction: float = param(0.2, ge=0, lt=1)
    test_size: int | None = param(2000, ge=1)  # cap on test images (stratified); None = all
    test_fraction: float = param(0.2, ge=0, lt=1)  # held out per class without a test split
    seed: int = param(0, ge=0, le=MAX_SEED)
    # a folder of images without labels (nested folders allowed): manifest rows of split
    # `unlabeled`, embedded by the features stage for `graft suggest`; never trained or scored
    unlabeled_path: str | None = param(None, nonempty=True)


@dataclass(frozen=True)
class ValidateParams:
    min_side: int = param(8, ge=1)  # pixels; shorter side of every image
    min_per_class: int = param(2, ge=1)  # training images per class
    max_imbalance: float = param(10.0, ge=1)  # largest / smallest training class
    # decompression-bomb guard, width × height; a gigapixel RGB image is 3 GB decoded
    max_pixels: int = param(40_000_000, ge=1, le=1_000_000_000)


@dataclass(frozen=True)
class FeaturesParams:
    # a graft.models.backbones name, `timm:<timm model name>` (weights from weights_dir), or
    # "auto": the features stage embeds with each of auto_backbones and keeps the top one by
    # LogME (names checked by graft.models.backbones.check_params)
    backbone: str = "efficientnet_lite0"
    image_size: int = param(224, ge=16, le=2048)  # pixels; beyond 2048 a batch is gigabytes
    batch_size: int = param(32, ge=1, le=MAX_BATCH)
    # augmented views per train/val image (graft.embeddings.views: flip, then crop/flip/jitter
    # draws) that the feature strategies fit on as extra rows; 0 = none
    views: int = param(0, ge=0, le=100)
    # where `timm:<name>` backbones find <name>.safetensors / .pth / .pt (relative: to the
    # project root); nothing is downloaded
    weights_dir: str = param("weights", nonempty=True)
    # the candidates of backbone: auto (and the default of `graft rank`)
    auto_backbones: list[str] = param(
        ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], nonempty=True)
    # a Dask scheduler, tcp://HOST:PORT: the images the store lacks are embedded on its workers in
    # shards of shard_size images, each a Prefect task (graft.embeddings.cluster); null = here
    cluster: str | None = None
    shard_size: int = param(256, ge=1, le=1_000_000)


@dataclass(frozen=True)
class AuditParams:
    """The audit stage (graft.labels): suspected label errors and near-duplicates across splits."""

    # a labelled image is suspect when the cosine to its own class's mean (itself left out)
    # minus the best other class's is below this; 0 = closer to another class than its own
    label_margin: float = param(0.0, ge=-2, le=2)
    on_label_issues: Literal["warn", "fail"] = "warn"  # fail: stop before finetune
    on_near_duplicates: Literal["warn", "fail"] = "warn"
    thumbnail_size: int = param(16, ge=4, le=64)  # pixels: the grayscale thumbnail compared
    # a near-copy's thumbnail correlation must reach 1 − slack·(1 − q05), q05 the 5th percentile
    # of re-encoded copies of `calibration_images` training images with their originals
    slack: float = param(3.0, gt=0, le=100)
    calibration_images: int = param(100, ge=10)
    # the thumbnail match must also be among the image's `neighbours` nearest by embedding
    neighbours: int = param(5, ge=1)
    # shorter side (pixels) below which only exact copies are looked for: at 8 px (digits)
    # a resized, re-encoded copy is no more alike than other images (docs/labels.md)
    min_side: int = param(16, ge=1)
    seed: int = param(0, ge=0)


@dataclass(frozen=True)
class FinetuneParams:
    strategy: str = "linear_probe"  # a graft.strategies name (checked there)
    seed: int = param(0, ge=0, le=MAX_SEED)
    # feature strategies (linear_probe, svm, prototype): transform of the cached embeddings,
    # built into the saved head (graft.models.heads); center = minus the training-feature mean
    feature_norm: FeatureNorm = "none"
    # svm: one-vs-rest SVMs; kernels, C and γ (× sklearn's 'scale' 1/(D·var)) chosen on val
    svm_kernels: list[Literal["linear", "rbf"]] = param(["linear", "rbf"], nonempty=True)
    svm_c_grid: list[float] = param([0.01, 0.1, 1.0, 10.0], gt=0, nonempty=True)
    svm_gamma_grid: list[float] = param([0.5, 1.0, 2.0], gt=0, nonempty=True)
    # linear_probe: inverse L2 strengths tried, chosen by validation accuracy
    c_grid: list[float] = param([0.01, 0.1, 1.0, 10.0], gt=0, nonempty=True)
    class_weight: Literal["none", "balanced"] = "none"
    # finetune
    epochs: int = param(15, ge=1, le=100_000)
    batch_size: int = param(16, ge=1, le=MAX_BATCH)
    lr: float = param(1e-3, gt=0)  # head learning rate
    backbone_lr: float = param(1e-4, ge=0)
    weight_decay: float = param(1e-4, ge=0)  # AdamW; applied to the head only when l2sp > 0
    freeze_blocks: int = param(0, ge=0, le=7)  # keep the stem and the first N of 7 blocks frozen
    bn_train: bool = False  # BatchNorm statistics stay frozen by default: few shots
    augment: bool = True
    l2sp: float = param(0.0, ge=0)  # λ in λ‖θ − θ_pretrained‖² over the trainable backbone
    patience: int = param(5, ge=1, le=100_000)  # epochs without val improvement before stopping
    amp: bool = True  # autocast on CUDA only
    # finetune / lp_ft: processes on this machine (torchrun, DistributedDataParallel; one GPU
    # each when there are GPUs); batch_size stays the global batch, split over them
    nproc_per_node: int = param(1, ge=1, le=1024)
    # finetune / lp_ft: lr of a backbone layer = backbone_lr · llrd^d, d its depth below the top
    # (conv_head 0, blocks[6] 1, …, blocks[0] 7, stem 8); 1.0 = one backbone lr
    llrd: float = param(1.0, gt=0, le=1)
    label_smoothing: float = param(0.0, ge=0, lt=1)  # ε of the training loss
    sampler: Literal["shuffle", "balanced"] = "shuffle"  # balanced: class-balanced oversampling
    mixup: float = param(0.0, ge=0)  # Beta(α, α) of mixup; 0 = off
    cutmix: float = param(0.0, ge=0)  # Beta(α, α) of cutmix; 0 = off (both on: one per batch)
    budget_s: float = param(600.0, gt=0)  # auto: wall-clock seconds for trying strategies
    # ensemble: one member per backbone × feature strategy, probabilities averaged
    ensemble_backbones: list[str] = param(
        ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], nonempty=True)
    ensemble_strategies: list[str] = param(["linear_probe", "svm"], nonempty=True)


@dataclass(frozen=True)
class EvaluateParams:
    # resamples for the 95% intervals (0: no intervals); each one is a pass over the test set
    bootstrap: int = param(1000, ge=0, le=100_000)
    seed: int = param(0, ge=0, le=MAX_SEED)
    baseline_image_size: int = param(32, ge=8, le=512)  # raw-pixel baselines' input, pixels
    cnn_epochs: int = param(60, ge=1, le=100_000)
    batch_size: int = param(64, ge=1, le=MAX_BATCH)  # images per forward pass when scoring
    # pixels_logreg: inverse L2 strengths tried, chosen by validation accuracy
    logreg_c_grid: list[float] = param([0.001, 0.01, 0.1, 1.0], gt=0, nonempty=True)
    cnn_batch_size: int = param(32, ge=2, le=MAX_BATCH)  # BatchNorm cannot train on batches of one
    cnn_lr: float = param(3e-3, gt=0)  # small_cnn AdamW peak learning rate, cosine to 0
    cnn_weight_decay: float = param(5e-4, ge=0)
    # transfer lost to the best baseline: warn (report + WARNING line), fail (non-zero exit
    # after every output is written) or use_baseline (export publishes models/baseline.pt)
    on_negative_transfer: Literal["warn", "fail", "use_baseline"] = "warn"


@dataclass(frozen=True)
class ExportParams:
    opset: int = param(17, ge=MIN_OPSET, le=MAX_OPSET)
    # fp32 parity: |Δlogit| allowed, × the image's largest |logit| when that is above 1
    max_abs_diff: float = param(1e-4, gt=0)
    parity_images: int = param(64, ge=1, le=100_000)  # torch reference (a trained backbone)
    batch_size: int = param(32, ge=1, le=MAX_BATCH)
    # models/model.int8.onnx: onnxruntime static quantisation (QDQ), gated on test accuracy
    int8: bool = True
    max_int8_drop: float = param(1.0, ge=0)  # accuracy points (fp32 − int8 top-1) allowed
    # share of test images whose int8 top-1 equals fp32's (the net accuracy drop hides flips);
    # the demo measures 94.8% with minmax calibration (docs/deployment.md)
    min_int8_agreement: float = param(0.93, ge=0, le=1)
    # minmax: on the demo as accurate as percentile (94.8% vs 95.7% agreement, +0.05 vs +0.25
    # points), 3.5× faster and in bounded memory (percentile held 8 GB of activations)
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_images: int = param(200, ge=1, le=100_000)  # training images, drawn with `seed`
    per_channel: bool = True  # per-tensor scales ruin depthwise convolutions
    reduce_range: bool = False  # 7-bit weights; set true on x86 CPUs without VNNI
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    # models/model.fp16.onnx for GPUs (float32 input/output), gated like int8
    fp16: bool = True
    max_fp16_drop: float = param(0.5, ge=0)  # accuracy points
    min_fp16_agreement: float = param(0.99, ge=0, le=1)
    fp16_check_images: int = param(500, ge=0)  # test images fp16 is checked on; 0 = all
    seed: int = param(0, ge=0, le=MAX_SEED)


@dataclass(frozen=True)
class SuggestParams:
    """`graft suggest` and the retrain report's list of images to label (graft.labels.suggest);
    no DVC stage reads this section."""

    n: int = param(10, ge=1)  # images suggested (`graft suggest --n` overrides)
    # auto: kmeans until every class has `cold_start` labels, then margin
    method: Literal["auto", "kmeans", "margin", "random"] = "auto"
    cold_start: int = param(3, ge=1)  # labels per class before the model's doubt is trusted
    max_clusters: int = param(500, ge=2)  # k-means clusters at most (TypiClust's cap)
    min_cluster: int = param(5, ge=1)  # smaller clusters are outliers, picked only when no other
    seed: int = param(0, ge=0)


@dataclass(frozen=True)
class RetrainParams:
    """The scheduled retrain loop (graft.lifecycle.retrain); no DVC stage reads this section."""

    min_gain: float = param(0.01, ge=0, le=1)  # challenger − champion accuracy to promote
    max_class_drop: float = param(0.05, ge=0, le=1)  # largest fall of one class's recall
    batch_size: int = param(32, ge=1, le=MAX_BATCH)  # images per forward pass of the gate
    lock_timeout: float = param(0.0, ge=0, le=86_400)  # seconds a second run waits for the lock
    git_commit: bool = False  # commit dvc.lock (metrics in the message) after a promotion
    dvc_push: bool = False  # `dvc push` after a promotion (needs a DVC remote)


@dataclass(frozen=True)
class Params:
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    audit: AuditParams = field(default_factory=AuditParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    suggest: SuggestParams = field(default_factory=SuggestParams)
    retrain: RetrainParams = field(default_factory=RetrainParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = typing.get_type_hints(Params)  # section name → its dataclass


def read_yaml(path: Path | str) -> Any:
    """A YAML file's content; ConfigError naming the file when it is missing, not YAML, or
    refused by graft.core.safe_yaml (alias bombs, repeated keys, FIFOs, huge files)."""
    try:
        return load_yaml(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except YamlError as exc:
        raise ConfigError(str(exc)) from None


def load_params(path: Path | str) -> Params:
    """Read and check a params.yaml; sections not present take their defaults."""
    return params_from_dict(read_yaml(path) or {}, source=str(path))


def params_from_dict(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    sections = {
        name: build_section(cls, raw.get(name) or {}, f"{source}: {name}")
        for name, cls in SECTIONS.items()
    }
    return Params(**sections)


def build_section(cls: type, raw: Any, where: str) -> Any:
    """`cls(**raw)` after the strict checks: unknown keys, wrong types and values outside a
    field's declared range raise ConfigError naming `where` and the key (used for params.yaml
    sections and other params files)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(fields))}"
        )
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in raw.items()}
    section = cls(**values)
    for name, f in fields.items():
        _check_range(getattr(section, name), f.metadata, f"{where}.{name}")
    return section


def _check_range(value: Any, rule: typing.Mapping[str, Any], where: str) -> None:
    """ConfigError '<where> = <value> must be <rule>' when `value` breaks its declared range."""
    if not rule or value is None:
        return
    items = value if isinstance(value, list) else [value]
    empty = rule.get("nonempty") and len(value) == 0
    bounds = [(name, limit) for name, limit in rule.items() if name != "nonempty"]
    if empty or any(not _within(item, name, limit) for item in items for name, limit in bounds):
        raise ConfigError(f"{where} = {_short(value)} must be "
                          f"{describe(rule, isinstance(value, list))}")


_OPS = {"ge": ("≥", lambda x, a: x >= a), "gt": (">", lambda x, a: x > a),
        "le": ("≤", lambda x, a: x <= a), "lt": ("<", lambda x, a: x < a)}


def _within(value: Any, name: str, limit: float) -> bool:
    return _OPS[name][1](value, limit)


def describe(rule: typing.Mapping[str, Any], is_list: bool = False) -> str:
    """A range in words: '≥ 1', 'in (0, 1]', 'a non-empty list of values > 0'."""
    low = next(((n, rule[n]) for n in ("ge", "gt") if n in rule), None)
    high = next(((n, rule[n]) for n in ("le", "lt") if n in rule), None)
    if low and high:
        text = (f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, "
                f"{high[1]:g}{']' if high[0] == 'le' else ')'}")
    elif low or high:
        name, limit = low or high
        text = f"{_OPS[name][0]} {limit:g}"
    else:
        text = ""
    if is_list:
        return f"a non-empty list of values {text}".rstrip() if rule.get("nonempty") \
            else f"a list of values {text}"
    return text or "non-empty"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1
                          else f"{where}: {_short(value)} is not {hint}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {_short(value)} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} "
                              f"{_short(value)}")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_short(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} "
                              f"{_short(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} "
                              f"{_short(value)}")
        if not math.isfinite(value):  # .nan passes no range check, .inf passes every lower one
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} "
                              f"{_short(value)}")
        return value
    raise TypeError(f"{where}: unsupported type hint {hint!r}")  # a bug in this module


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error message never echoes a huge value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
