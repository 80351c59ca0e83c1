"""The seven pipeline stages, one module each (ingest validate features audit finetune evaluate
export), each a thin shell: `run(params, layout) -> dict` reads its params and declared inputs,
calls the libraries, writes its outputs atomically and returns the metrics it wrote. Stages
never import each other; only the faces (graft.cli, graft.flows) import a stage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from graft.core.config import Params
from graft.core.layout import STAGES, Layout
from graft.embeddings.store import check_params as check_features
from graft.strategies import check_params as check_finetune

__all__ = ["STAGES", "check_params", "runner"]


def runner(stage: str) -> Callable[[Params, Layout], dict]:
    """The stage's `run`, its module imported on first use (most import torch)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return importlib.import_module(f"{__name__}.{stage}").run


def check_params(params: Params, source: str) -> None:
    """The names only the registries know (backbones, strategies), for every stage at once:
    what the faces check before any stage starts (graft.core.config checked types and ranges
    when the file was loaded)."""
    check_features(params.features, source)
    check_finetune(params.finetune, source)
