"""The seven pipeline stages, one module each (ingest validate features audit finetune evaluate
export), each a thin shell: `run(params, layout) -> dict` reads its params and declared inputs,
calls the libraries, writes its outputs atomically and returns the metrics it wrote. Stages
never import each other; only the faces (graft.cli, graft.flows) import a stage.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

from graft.core import distributed
from graft.core.config import Params, load_params
from graft.core.files import clean_temp
from graft.core.layout import STAGES, Layout
from graft.embeddings.choice import check_params as check_features
from graft.strategies import check_params as check_finetune

__all__ = ["STAGES", "check_params", "run_stage", "runner"]


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


def run_stage(stage: str, root: str | Path = ".", params_path: str | Path | None = None) -> dict:
    """Run one stage in this process, without Prefect (`graft <stage> --no-prefect`, and the
    body of each stage flow): load and check params, call its run(). finetune with
    `nproc_per_node` > 1 (and not already under torchrun) runs in that many torchrun processes,
    `graft finetune --no-prefect` each (graft.core.distributed); rank 0's metrics are read back."""
    layout = Layout(Path(root))
    path = params_path or layout.params
    params = load_params(path)
    check_params(params, str(path))
    nproc = params.finetune.nproc_per_node
    if not distributed.launched():  # one cleaner, not one per torchrun rank
        clean_temp(*layout.scratch_folders)  # what a killed run left beside the outputs
    if stage == "finetune" and nproc > 1 and not distributed.launched():
        distributed.launch(["graft.cli", stage, "--no-prefect", "--root",
                            str(layout.root.resolve()), "--params", str(Path(path).resolve())],
                           nproc)
        return json.loads(layout.metrics(stage).read_text(encoding="utf-8"))
    return runner(stage)(params, layout)
