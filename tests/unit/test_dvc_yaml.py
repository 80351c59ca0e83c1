"""dvc.yaml and the code agree: one stage per module, deps cover the modules each one imports."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from graft.layout import STAGES, Layout

REPO = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
DISPATCH_ONLY = {"graft.cli", "graft.flows", "graft.layout", "graft"}


def _graft_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """Every graft.* module `module` imports, transitively."""
    seen = set() if seen is None else seen
    path = REPO / "src" / Path(*module.split(".")).with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "graft":  # from graft import x
            names = [f"graft.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graft"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("graft.")]
        for name in names:
            if name not in seen and name not in DISPATCH_ONLY:
                seen.add(name)
                _graft_imports(name, seen)
    return seen


def test_one_stage_per_module_in_order():
    assert tuple(DVC) == STAGES
    for stage, spec in DVC.items():
        assert spec["cmd"] == f"graft {stage}"
        assert f"src/graft/{stage}.py" in spec["deps"]


def test_deps_list_every_module_a_stage_imports():
    for stage, spec in DVC.items():
        needed = {f"src/graft/{m.split('.', 1)[1]}.py" for m in _graft_imports(f"graft.{stage}")}
        missing = needed - set(spec["deps"])
        assert not missing, f"{stage}: dvc.yaml deps lack {sorted(missing)}"


def test_metrics_paths_match_the_layout():
    layout = Layout(Path("."))
    for stage, spec in DVC.items():
        declared = [next(iter(m)) if isinstance(m, dict) else m for m in spec.get("metrics", [])]
        assert declared == [str(layout.metrics(stage))]
