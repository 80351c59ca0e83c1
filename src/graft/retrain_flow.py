"""The Prefect flow `retrain`: the scheduled champion/challenger loop (deployed as
`graft-retrain`, flows/retrain.py). It runs the steps of graft.lifecycle.retrain as tasks,
retrying only the ones that do IO; `dvc repro` inside it runs the stages (graft.flows).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import graft.flows  # noqa: F401  (its Prefect settings come before Prefect is imported)

# isort: split
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from graft.core.config import load_params
from graft.core.layout import Layout
from graft.lifecycle import registry
from graft.lifecycle import retrain as steps
from graft.lifecycle.report import commit_message, table_rows

# Tasks take the project root as a string (Prefect parameters are JSON).

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
