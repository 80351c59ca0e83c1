"""params.yaml → one frozen dataclass per stage section; unknown keys and wrong types raise.

Every hyperparameter a stage reads comes from its own section here. The defaults below are the
documented defaults (README "Params reference"); params.yaml states them explicitly so that DVC
tracks each one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class IngestParams:
    source: Literal["folder", "csv", "fashion-mnist", "digits"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"  # folder, CSV file or idx folder
    shots_per_class: int | None = 10  # training images per class; None = all that remain
    val_per_class: int = 10
    test_size: int | None = 2000  # cap on test images (stratified); None = the whole test split
    test_fraction: float = 0.2  # held out per class when the source has no test split
    seed: int = 0


@dataclass(frozen=True)
class ValidateParams:
    min_side: int = 8  # pixels; shorter side of every image
    min_per_class: int = 2  # training images per class
    max_imbalance: float = 10.0  # largest / smallest training class
    max_pixels: int = 40_000_000  # decompression-bomb guard, width × height


@dataclass(frozen=True)
class FeaturesParams:
    # a graft.backbones.BACKBONES name, `timm:<timm model name>` (weights from weights_dir), or
    # "auto": the features stage embeds with each of auto_backbones and keeps the top one by
    # LogME (checked by graft.features.check_params)
    backbone: str = "efficientnet_lite0"
    image_size: int = 224
    batch_size: int = 32
    # augmented views per train/val image (graft.views: flip, then crop/flip/jitter draws) that
    # the feature strategies fit on as extra rows; 0 = none
    views: int = 0
    # where `timm:<name>` backbones find <name>.safetensors / .pth / .pt (relative: to the
    # project root); nothing is downloaded
    weights_dir: str = "weights"
    # the candidates of backbone: auto (and the default of `graft rank`)
    auto_backbones: list[str] = field(default_factory=lambda: [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])


@dataclass(frozen=True)
class FinetuneParams:
    strategy: Literal["linear_probe", "svm", "prototype", "finetune", "lp_ft", "ensemble",
                      "auto"] = "linear_probe"
    seed: int = 0
    # feature strategies (linear_probe, svm, prototype): transform of the cached embeddings,
    # built into the saved head (graft.heads); center = minus the training-feature mean
    feature_norm: Literal["none", "center", "l2", "center_l2"] = "none"
    # svm: one-vs-rest SVMs; kernels, C and γ (× sklearn's 'scale' 1/(D·var)) chosen on val
    svm_kernels: list[str] = field(default_factory=lambda: ["linear", "rbf"])
    svm_c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    svm_gamma_grid: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # linear_probe: inverse L2 strengths tried, chosen by validation accuracy
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    class_weight: Literal["none", "balanced"] = "none"
    # finetune
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3  # head learning rate
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4  # AdamW; applied to the head only when l2sp > 0
    freeze_blocks: int = 0  # keep the stem and the first N blocks frozen
    bn_train: bool = False  # BatchNorm statistics stay frozen by default: few shots
    augment: bool = True
    l2sp: float = 0.0  # λ in λ‖θ − θ_pretrained‖² over the trainable backbone weights
    patience: int = 5  # epochs without val improvement before stopping
    amp: bool = True  # autocast on CUDA only
    # finetune / lp_ft: lr of a backbone layer = backbone_lr · llrd^d, d its depth below the top
    # (conv_head 0, blocks[6] 1, …, blocks[0] 7, stem 8); 1.0 = one backbone lr
    llrd: float = 1.0
    label_smoothing: float = 0.0  # ε of the training loss (validation loss stays plain CE)
    sampler: Literal["shuffle", "balanced"] = "shuffle"  # balanced: class-balanced oversampling
    mixup: float = 0.0  # Beta(α, α) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(α, α) of cutmix; 0 = off (both on: one of the two per batch)
    budget_s: float = 600.0  # auto: wall-clock seconds for trying strategies
    # ensemble: one member per backbone × feature strategy, probabilities averaged
    ensemble_backbones: list[str] = field(default_factory=lambda: [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    ensemble_strategies: list[str] = field(default_factory=lambda: ["linear_probe", "svm"])


@dataclass(frozen=True)
class EvaluateParams:
    bootstrap: int = 1000  # resamples for the 95% intervals
    seed: int = 0
    baseline_image_size: int = 32  # raw-pixel baselines see images at this size
    cnn_epochs: int = 60
    batch_size: int = 64  # images per forward pass when scoring the model
    # pixels_logreg: inverse L2 strengths tried, chosen by validation accuracy
    logreg_c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0])
    cnn_batch_size: int = 32  # small_cnn training batch; 100 images → 4 steps per epoch
    cnn_lr: float = 3e-3  # small_cnn AdamW peak learning rate, cosine-decayed to 0
    cnn_weight_decay: float = 5e-4
    # transfer lost to the best baseline: warn (report + WARNING line), fail (non-zero exit
    # after every output is written) or use_baseline (export publishes models/baseline.pt)
    on_negative_transfer: Literal["warn", "fail", "use_baseline"] = "warn"


@dataclass(frozen=True)
class ExportParams:
    opset: int = 17
    max_abs_diff: float = 1e-4  # torch vs onnxruntime logits, every test image
    batch_size: int = 32
    # models/model.int8.onnx: onnxruntime static quantisation (QDQ), gated on test accuracy
    int8: bool = True
    max_int8_drop: float = 1.0  # accuracy points (fp32 − int8 top-1 on the test split) allowed
    calibration: Literal["minmax", "entropy", "percentile"] = "percentile"
    calibration_images: int = 200  # training images, sampled with `seed` when there are more
    per_channel: bool = True  # per-tensor scales ruin depthwise convolutions
    reduce_range: bool = False  # 7-bit weights; set true on x86 CPUs without VNNI
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    # models/model.fp16.onnx for GPUs (float32 input/output), gated like int8
    fp16: bool = True
    max_fp16_drop: float = 0.5  # accuracy points
    seed: int = 0


@dataclass(frozen=True)
class RetrainParams:
    """The scheduled retrain loop (graft.retrain); no DVC stage reads this section."""

    min_gain: float = 0.01  # challenger accuracy − champion accuracy needed to promote (0..1)
    max_class_drop: float = 0.05  # largest fall in any one class's recall allowed (0..1)
    batch_size: int = 32  # images per forward pass when the gate scores both models
    lock_timeout: float = 0.0  # seconds a second run waits for models/.lock; 0 = exit at once
    git_commit: bool = False  # commit dvc.lock (metrics in the message) after a promotion
    dvc_push: bool = False  # `dvc push` after a promotion (needs a DVC remote)


@dataclass(frozen=True)
class Params:
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    retrain: RetrainParams = field(default_factory=RetrainParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = typing.get_type_hints(Params)  # section name → its dataclass


def load_params(path: Path | str) -> Params:
    """Read and check a params.yaml; sections not present take their defaults."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return params_from_dict(raw or {}, source=str(path))


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
    """`cls(**raw)` after the strict checks: unknown keys and wrong types raise ConfigError
    naming `where` and the key (used for params.yaml sections and other params files)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in raw.items()}
    return cls(**values)


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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not {hint}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type hint {hint!r}")  # a bug in this module
