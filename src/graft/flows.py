"""The Prefect flows: one per stage (named after the stage), `pipeline`, which runs all seven, and
`retrain`, the scheduled champion/challenger loop (deployed as `graft-retrain`).

Thin on purpose: a stage flow loads params.yaml, calls the stage's run() (graft.stages) and
publishes the stage's metrics as a Prefect artifact; the retrain flow runs the steps of
graft.lifecycle.retrain as tasks, retrying only the ones that do IO. Without `PREFECT_API_URL`
Prefect starts a temporary local server in the process (ephemeral mode, ~10 s); with it set, runs
are reported to that server.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Prefect reads its settings when it is imported: these defaults (the user's environment wins)
# come first. No network here or on many users' boxes: Prefect must not phone home. The
# temporary server takes ~10 s to start on an idle 2-core box and more under load; Prefect's
# 20 s default fails stages that would have run fine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import Flow, flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from graft.core.config import load_params  # noqa: E402
from graft.core.layout import STAGES, Layout  # noqa: E402
from graft.lifecycle import registry  # noqa: E402
from graft.lifecycle import retrain as steps  # noqa: E402
from graft.lifecycle.report import commit_message, table_rows  # noqa: E402
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


# The retrain loop. Tasks take the project root as a string (Prefect parameters are JSON).

@task(name="ingest", retries=2, retry_delay_seconds=10)  # reads the data source: IO, may flake
def ingest(root: str) -> None:
    steps.ingest(Layout(Path(root)))


@task(name="detect-change")
def detect_change(root: str) -> dict[str, Any]:
    return steps.detect_change(Layout(Path(root)))


@task(name="dvc-repro")  # deterministic compute: a failure here is not fixed by retrying
def dvc_repro(root: str) -> None:
    steps.repro(Layout(Path(root)))


@task(name="gate")
def score_and_decide(root: str) -> dict[str, Any]:
    return steps.score_and_decide(Layout(Path(root)))


@task(name="promote", retries=2, retry_delay_seconds=5)
def promote(root: str, result: dict[str, Any]) -> str:
    return steps.promote(Layout(Path(root)), result)


@task(name="git-commit", retries=2, retry_delay_seconds=5)
def git_commit(root: str, message: str) -> None:
    steps.git_commit(Layout(Path(root)), message)


@task(name="dvc-push", retries=3, retry_delay_seconds=30)  # network to the remote
def dvc_push(root: str) -> None:
    steps.dvc_push(Layout(Path(root)))


@task(name="suggest")
def next_to_label(root: str) -> dict[str, Any]:
    return steps.next_to_label(Layout(Path(root)))


@task(name="publish", retries=2, retry_delay_seconds=5)
def publish(root: str, result: dict[str, Any]) -> None:
    """reports/retrain.{json,md} for the record; markdown + table artifacts for the Prefect UI."""
    text = steps.write_report(Layout(Path(root)), result)
    create_markdown_artifact(markdown=text, key="graft-retrain", description=result["status"])
    rows = table_rows(result)
    if rows:
        create_table_artifact(table=rows, key="graft-retrain-scores",
                              description="champion vs challenger on the same images")


@flow(name="retrain", log_prints=True, persist_result=False)
def retrain(root: str = ".", source: str | None = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain on new data and promote the challenger only if it beats the champion.

    source: a new ingest.path; overrides: {"section.key": value}, this run's only: params.yaml
    holds them while the run does (DVC reads them there), then is the user's own file again."""
    layout = Layout(Path(root).resolve())
    root = str(layout.root)
    logger = get_run_logger()
    timeout = load_params(layout.params).retrain.lock_timeout
    with registry.lock(layout.models, timeout), \
            steps.run_params(layout, source, overrides) as run_overrides:
        result: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                                  "recovered": registry.recover(layout.models),
                                  "overrides": run_overrides}
        layout.retrain_log("dvc").unlink(missing_ok=True)  # this run's log only
        ingest(root)
        result["change"] = detect_change(root)
        if not result["change"]["changed"]:
            result["status"] = "no change"
            result["champion_version"] = registry.champion(layout.models).info["version"]
            logger.info("no new or changed images since the champion; nothing to train")
            result["suggestions"] = next_to_label(root)
            publish(root, result)
            return result
        dvc_repro(root)
        result |= score_and_decide(root)
        metrics = steps.pipeline_metrics(layout)
        if metrics is not None:
            result["pipeline_metrics"] = metrics
        for reason in result["reasons"]:
            logger.info("gate: %s", reason)
        if result["promote"]:
            result["promoted_version"] = promote(root, result)
            result["status"] = "promoted"
            p = load_params(layout.params).retrain
            if p.git_commit:
                git_commit(root, commit_message(result))
            if p.dvc_push:
                dvc_push(root)
        else:
            result["status"] = "kept champion"
        result["suggestions"] = next_to_label(root)
        publish(root, result)
        return result
