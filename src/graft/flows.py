"""Prefect flows: one per stage (named after the stage) and `pipeline`, which runs all six.

Thin on purpose: each flow loads params.yaml, calls `graft.<stage>.run`, and publishes the
stage's metrics as a Prefect artifact. Without `PREFECT_API_URL` Prefect starts a temporary local
server in the process (ephemeral mode, ~10 s); with it set, runs are reported to that server.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import graft.prefect_defaults  # noqa: F401  (before prefect: its settings are read at import)

# isort: split
from prefect import Flow, flow
from prefect.artifacts import create_markdown_artifact

from graft.config import load_params
from graft.layout import STAGES, Layout


def run_stage(stage: str, root: str | Path = ".", params_path: str | Path | None = None) -> dict:
    """Run one stage in-process, without Prefect: load params, call the module's run()."""
    layout = Layout(Path(root))
    params = load_params(params_path or layout.params)
    module = importlib.import_module(f"graft.{stage}")
    return module.run(params, layout)


def _stage_flow(stage: str) -> Flow:
    def stage_flow(root: str = ".", params_path: str | None = None) -> dict:
        metrics = run_stage(stage, root, params_path)
        create_markdown_artifact(
            markdown=f"## {stage}\n\n```json\n{json.dumps(metrics, indent=2, default=str)}\n```\n",
            key=f"graft-{stage}",
            description=f"metrics/{stage}.json",
        )
        return metrics

    stage_flow.__doc__ = f"The {stage} stage of Graft (graft.{stage}.run)."
    return Flow(stage_flow, name=stage, log_prints=True, persist_result=False)


STAGE_FLOWS: dict[str, Flow] = {stage: _stage_flow(stage) for stage in STAGES}


@flow(name="pipeline", log_prints=True, persist_result=False)
def pipeline(root: str = ".", params_path: str | None = None) -> dict[str, dict]:
    """All six stages in order, each as a subflow; stops at the first failing stage."""
    return {stage: STAGE_FLOWS[stage](root, params_path) for stage in STAGES}
