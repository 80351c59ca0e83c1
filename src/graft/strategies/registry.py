"""Strategies by name, registered once (as timm's `register_model`): the one list that config
validation, the finetune and features stages, `auto`, `ensemble` and the few-shot benchmark read.

A registration names the strategy, its kind and where it lives: "module:Class", imported on first
use (checking params needs no torch), or a `Strategy` instance. Kinds:

- `features`: a head fitted on cached embeddings (graft.strategies.base.FeatureStrategy); `auto`
  searches their settings and `ensemble` combines them;
- `network`: trains the network itself;
- `composite`: built from other strategies (`auto`, `ensemble`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graft.core.config import ConfigError, FinetuneParams

if TYPE_CHECKING:
    from graft.models.catalogue import BackboneSpec
    from graft.strategies.base import Strategy

KINDS = ("features", "network", "composite")


@dataclass
class _Entry:
    kind: str
    target: str | Strategy  # "module:Class" or the strategy itself
    backbones_key: str | None  # the finetune key naming more backbones it reads (ensemble's)
    loaded: Strategy | None = field(default=None, repr=False)  # the instance, once imported


_REGISTRY: dict[str, _Entry] = {}


def register_strategy(name: str, kind: str, target: str | Strategy,
                      backbones_key: str | None = None) -> None:
    """Make `name` a value of finetune.strategy: `target` is "module:Class" (imported and
    instantiated on first use) or a Strategy instance; `backbones_key` names the finetune key
    listing backbones beyond features.backbone whose embeddings it reads, which the features
    stage then embeds too."""
    if name in _REGISTRY:
        raise ValueError(f"strategy {name!r} is already registered")
    if kind not in KINDS:
        raise ValueError(f"strategy {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if backbones_key is not None and backbones_key not in FinetuneParams.__dataclass_fields__:
        raise ValueError(f"strategy {name!r}: {backbones_key!r} is not a finetune key")
    _REGISTRY[name] = _Entry(kind, target, backbones_key)


def unregister_strategy(name: str) -> None:
    """Forget `name` (a plug-in's or a test's strategy)."""
    _REGISTRY.pop(name, None)


def strategy_names(kind: str | None = None) -> list[str]:
    """Registered names in registration order (the order `auto` tries feature strategies)."""
    return [name for name, entry in _REGISTRY.items() if kind in (None, entry.kind)]


def strategy_kind(name: str) -> str:
    return _entry(name).kind


def extra_backbones(p: FinetuneParams) -> list[str]:
    """The backbones beyond features.backbone whose embeddings `p.strategy` reads."""
    key = _entry(p.strategy).backbones_key
    return list(getattr(p, key)) if key else []


def get_strategy(name: str) -> Strategy:
    """The strategy registered as `name`, its module imported on the first call."""
    from graft.strategies.base import FeatureStrategy  # torch: only when a strategy is used

    entry = _entry(name)
    if entry.loaded is None:
        target = entry.target
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)()
        if (entry.kind == "features") != isinstance(target, FeatureStrategy):
            raise TypeError(f"strategy {name!r} is registered as {entry.kind!r} but "
                            f"{type(target).__name__} is {'not ' * (entry.kind == 'features')}a "
                            "FeatureStrategy")
        entry.loaded = target
    return entry.loaded


def registered_modules() -> list[str]:
    """The modules that registrations name (what the finetune stage depends on beyond its
    imports)."""
    return sorted({e.target.partition(":")[0] for e in _REGISTRY.values()
                   if isinstance(e.target, str)})


def check_params(p: FinetuneParams, source: str = "params") -> None:
    """The finetune section's names and the rules between its keys (graft.core.config checked
    types and ranges); ConfigError naming `source` and the key."""
    if p.strategy not in _REGISTRY:
        raise ConfigError(f"{source}: finetune.strategy = {p.strategy!r} must be one of "
                          f"{', '.join(_REGISTRY)}")
    features = strategy_names("features")
    if not set(p.ensemble_strategies) <= set(features):
        raise ConfigError(f"{source}: finetune.ensemble_strategies = {p.ensemble_strategies!r} "
                          f"must be a non-empty list of {', '.join(features)}")
    if strategy_kind(p.strategy) == "network" and p.feature_norm != "none":
        raise ConfigError(f"{source}: finetune.feature_norm = {p.feature_norm!r} must be none "
                          f"with strategy {p.strategy} (it applies to the feature strategies "
                          f"only: {', '.join(features)})")
    if p.nproc_per_node > 1:
        _check_processes(p, source)
    key = _entry(p.strategy).backbones_key
    if key:
        _check_backbones(getattr(p, key), f"finetune.{key}", source)


def _check_backbones(names: list[str], key: str, source: str) -> None:
    """A strategy reading several backbones' embeddings (ensemble): every one is known, and all
    share one preprocessing (mean and std), since one input feeds them all. Checked here, not in
    the strategy's module, so that checking params imports no torch."""
    from graft.models.catalogue import check_backbone

    for name in names:
        check_backbone(name, key, source)
    if len({_spec(b).mean + _spec(b).std for b in names}) > 1:
        raise ConfigError(f"{source}: {key} = {names!r} must share one preprocessing (mean and "
                          "std): one input feeds every backbone")


def _spec(name: str) -> BackboneSpec:
    from graft.models.catalogue import BACKBONES, is_timm

    if is_timm(name):
        from graft.models.backbones import get_spec  # timm's config: imports torch

        return get_spec(name)
    return BACKBONES[name]


def _check_processes(p: FinetuneParams, source: str) -> None:
    """Several processes train a network, with BatchNorm frozen unless there are GPUs (torch's
    SyncBatchNorm runs on CUDA only)."""
    if strategy_kind(p.strategy) != "network":
        raise ConfigError(f"{source}: finetune.nproc_per_node = {p.nproc_per_node} needs a "
                          f"network strategy ({', '.join(strategy_names('network'))}); "
                          f"finetune.strategy is {p.strategy}")
    import torch  # only here: checking params needs no torch otherwise

    if p.bn_train and not torch.cuda.is_available():
        raise ConfigError(f"{source}: finetune.bn_train with finetune.nproc_per_node > 1 needs "
                          "GPUs (SyncBatchNorm); on CPUs keep BatchNorm frozen (bn_train: false)")


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; registered: {', '.join(_REGISTRY)}") \
            from None
