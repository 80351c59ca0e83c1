"""dvc.yaml and the code agree: one stage per module of graft.stages, and each stage's deps cover
every module it imports (and the strategy modules the registry imports for it); likewise the
few-shot benchmark's stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from graft.core.layout import STAGES, Layout
from graft.strategies import registered_modules
from tests.fixtures import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SRC = REPO / "src"
# the faces only dispatch: editing them must not retrain (and the package root holds nothing)
DISPATCH_ONLY = {"graft", "graft.cli", "graft.flows", "graft.retrain_flow"}
# The registry names strategy modules as strings and imports them in `get_strategy`: a module
# that imports get_strategy depends on all of them (one that only checks names does not).
REGISTRY = {"graft.strategies", "graft.strategies.registry"}


def module_path(module: str) -> Path:
    """src/graft/a/b.py for graft.a.b, or src/graft/a/b/__init__.py for a package."""
    path = SRC / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(module: str) -> bool:
    return module_path(module).exists()


def _imported(module: str) -> list[str]:
    """The graft modules `module` imports, anywhere in it (`from graft.a import b` imports
    graft.a.b when that is a module, else graft.a); a module importing `get_strategy` also
    depends on every strategy module the registry imports on demand."""
    names, loads_strategies = [], False
    for node in ast.walk(ast.parse(module_path(module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "graft" or node.module.startswith("graft.")):
            names += [f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}")
                      else node.module for a in node.names]
            loads_strategies |= node.module in REGISTRY and any(
                a.name == "get_strategy" for a in node.names)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("graft.")]
    if loads_strategies and module not in REGISTRY:
        names += registered_modules()
    return names


def graft_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Every graft.* module `module` imports, transitively."""
    seen = set() if seen is None else seen
    for name in _imported(module):
        if name not in seen and name not in DISPATCH_ONLY:
            seen.add(name)
            graft_imports(name, seen)
    return seen


def _src_paths(modules: set[str]) -> set[str]:
    return {str(module_path(m).relative_to(REPO)) for m in modules}


def test_imports_resolve_packages_modules_and_the_registry():
    finetune = graft_imports("graft.stages.finetune")
    assert {"graft.strategies", "graft.strategies.registry", "graft.strategies.auto",
            "graft.strategies.network", "graft.strategies.training"} <= finetune
    assert "src/graft/strategies/__init__.py" in _src_paths(finetune)
    assert "graft.models.ensemble" in graft_imports("graft.strategies.ensemble")  # from pkg import
    assert not DISPATCH_ONLY & graft_imports("graft.stages.export")
    # the features stage reads the registry's names, never a strategy module
    assert "graft.strategies.svm" not in graft_imports("graft.stages.features")


def test_one_stage_per_module_in_order():
    assert tuple(DVC) == STAGES
    for stage, spec in DVC.items():
        assert spec["cmd"] == f"graft {stage}"
        assert f"src/graft/stages/{stage}.py" in spec["deps"]


def test_deps_list_exactly_the_modules_a_stage_imports():
    """A missing module is a change DVC does not see; a stale one reruns a stage for nothing."""
    wrong = {}
    for stage, spec in DVC.items():
        needed = _src_paths(graft_imports(f"graft.stages.{stage}") | {f"graft.stages.{stage}"})
        listed = {d for d in spec["deps"] if d.startswith("src/")}
        if needed != listed:
            wrong[stage] = (f"lacks {sorted(needed - listed)}, "
                            f"lists for nothing {sorted(listed - needed)}")
    assert not wrong, "dvc.yaml deps:\n" + "\n".join(
        f"  {stage}: {why}" for stage, why in wrong.items())


def test_dvc_shows_the_headline_metrics_and_tracks_every_stages_own():
    """`dvc metrics show` prints metrics/scores.json and metrics/onnx.json (a few columns);
    each stage's full metrics/<stage>.json is one of its outputs."""
    layout = Layout(Path("."))

    def paths(entries: list) -> list[str]:
        return [next(iter(m)) if isinstance(m, dict) else m for m in entries]

    declared = {stage: paths(spec.get("metrics", [])) for stage, spec in DVC.items()}
    assert declared == {stage: [] for stage in DVC} | {
        "evaluate": [str(layout.metrics("scores"))], "export": [str(layout.metrics("onnx"))]}
    for stage, spec in DVC.items():
        assert str(layout.metrics(stage)) in paths(spec["outs"]), stage


@pytest.mark.parametrize(("folder", "stage", "module"), [
    ("fewshot-benchmark", "fewshot", "graft.evaluation.fewshot"),
    ("labeling-benchmark", "labelbench", "graft.labels.benchmark"),
])
def test_benchmark_dvc_stage_lists_the_modules_it_imports(folder, stage, module) -> None:
    path = REPO / "pipelines" / folder
    spec = yaml.safe_load((path / "dvc.yaml").read_text())["stages"][stage]
    deps = {str((path / d).resolve().relative_to(REPO)) for d in spec["deps"]}
    needed = _src_paths(graft_imports(module) | {module})
    assert needed <= deps, sorted(needed - deps)
    assert spec["cmd"] == f"graft {stage} --params params.yaml"
