"""The stages' Prefect flows: one per stage (named after the stage) and `pipeline`, which runs
all seven. The scheduled retrain loop is graft.retrain_flow.

Thin on purpose: a stage flow loads params.yaml, calls the stage's run() (graft.stages) and
publishes the stage's metrics as a Prefect artifact. Importing this module costs Prefect's import
and nothing else (each stage imports what it needs when it runs): every `graft <stage>` pays it,
seven times per `dvc repro`. Without `PREFECT_API_URL` Prefect starts a temporary local server in
the process (ephemeral mode, ~10 s); with it set, runs are reported to that server.
"""

from __future__ import annotations

import json
import os

# Prefect reads its settings when it is imported: these defaults (the user's environment wins)
# come first. No network here or on many users' boxes: Prefect must not phone home. The
# temporary server takes ~10 s to start on an idle 2-core box and more under load; Prefect's
# 20 s default fails stages that would have run fine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import Flow, flow  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from graft.core.layout import STAGES  # noqa: E402
from graft.stages import run_stage  # noqa: E402


def _stage_flow(stage: str) -> Flow:
    def stage_flow(root: str = ".", params_path: str | None = None) -> dict:
        metrics = run_stage(stage, root, params_path)
        create_markdown_artifact(
            markdown=f"## {stage}\n\n```json\n{json.dumps(metrics, indent=2, default=str)}\n```\n",
            key=f"graft-{stage}",
            description=f"metrics/{stage}.json",
        )
        return metrics

    stage_flow.__doc__ = f"The {stage} stage of Graft (graft.stages.{stage}.run)."
    return Flow(stage_flow, name=stage, log_prints=True, persist_result=False)


STAGE_FLOWS: dict[str, Flow] = {stage: _stage_flow(stage) for stage in STAGES}


@flow(name="pipeline", log_prints=True, persist_result=False)
def pipeline(root: str = ".", params_path: str | None = None) -> dict[str, dict]:
    """All seven stages in order, each as a subflow; stops at the first failing stage."""
    return {stage: STAGE_FLOWS[stage](root, params_path) for stage in STAGES}
