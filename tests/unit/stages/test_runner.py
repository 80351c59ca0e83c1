"""graft.stages: each stage's `run`, found by name (what the faces call)."""

from __future__ import annotations

import importlib

import pytest

from graft.core.layout import STAGES
from graft.stages import runner


def test_runner_gives_each_stage_its_run_and_refuses_other_names() -> None:
    for stage in STAGES:
        assert runner(stage) is importlib.import_module(f"graft.stages.{stage}").run
    with pytest.raises(ValueError, match="unknown stage 'rank'; stages are ingest, validate"):
        runner("rank")
