"""The house rules of src/graft (README "Architecture"), checked on every import statement.

Every module's imports (module level and inside functions, found with ast) are edges between
graft modules. The rules:
(a) no import circle anywhere in graft;
(b) each module lives in a room, ranked faces (graft.cli, graft.flows, the package itself and any
    other module directly in src/graft/) > stages > lifecycle > deploy > labels > evaluation
    > strategies > embeddings > models > data > core; an import goes to the same room or a
    lower one;
(c) stages never import each other, and nothing but graft.stages, the faces' graft.flows and
    graft.cli imports a graft.stages module;
(d) at most six modules directly in src/graft/;
(e) bundle_template/ (copied into bundles, run without Graft) is never imported, and imports
    nothing of Graft itself.
A breach is reported as `file:line → module` with the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "graft"
ROOMS = ("core", "data", "models", "embeddings", "strategies", "evaluation", "labels", "deploy",
         "lifecycle", "stages")  # lowest first; the faces rank above them all
FACES_RANK = len(ROOMS)
TEMPLATE = f"{PACKAGE}.deploy.bundle_template"
MAX_TOP_LEVEL = 6
STAGE_IMPORTERS = (f"{PACKAGE}.stages", f"{PACKAGE}.flows", f"{PACKAGE}.cli")


@dataclass(frozen=True)
class Edge:
    """`source` (a module, in file `where`) imports `target` (a module)."""

    source: str
    target: str
    where: str

    def __str__(self) -> str:
        return f"{self.where} → {self.target}"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graft_modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))
            if "__pycache__" not in p.parts}


def import_edges(modules: dict[str, Path], src: Path = SRC) -> list[Edge]:
    """Every import of a graft module by a graft module; `from a.b import c` is an import of the
    module a.b.c when there is one, else of a.b (its package or module)."""
    edges = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(src.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            edges += [Edge(name, t, where) for t in dict.fromkeys(targets)
                      if t == PACKAGE or t.startswith(f"{PACKAGE}.")]
    return edges


def room_rank(module: str) -> int | None:
    """The module's room as its rank; None for a subpackage that is no room."""
    parts = module.split(".")
    if len(parts) == 1:
        return FACES_RANK  # the package itself
    if parts[1] in ROOMS:
        return ROOMS.index(parts[1])
    if len(parts) == 2 and not (SRC / PACKAGE / parts[1]).is_dir():
        return FACES_RANK  # a module directly in src/graft/
    return None


def _room(module: str) -> str:
    rank = room_rank(module)
    return "faces" if rank == FACES_RANK else (ROOMS[rank] if rank is not None else "?")


def _is_stage(module: str) -> bool:
    """A stage module (graft.stages.<stage>), not the package itself."""
    return module.startswith(f"{PACKAGE}.stages.")


def find_circles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle of edges per strongly connected component that has one (Tarjan)."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph[v]:
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    circles = []
    for component in components:
        members = set(component)
        self_loop = [e for e in graph[component[0]] if e.target == component[0]]
        if len(component) == 1 and not self_loop:
            continue
        circles.append(self_loop[:1] or _cycle_through(sorted(members)[0], members, graph))
    return circles


def _cycle_through(start: str, members: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest cycle start → … → start inside one strongly connected component."""
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in graph[v]:
                if e.target == start:
                    return [*paths[v], e]
                if e.target in members and e.target not in paths:
                    paths[e.target] = [*paths[v], e]
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"{start}: no cycle in its component")  # cannot happen


def breaches(edges: list[Edge], top_level: list[str]) -> list[str]:
    """Every breach of rules (a)–(e), in words, each naming the file and the module imported."""
    out = []
    for circle in find_circles(edges):
        out.append("(a) import circle: " + "; ".join(str(e) for e in circle))
    for e in edges:
        source, target = room_rank(e.source), room_rank(e.target)
        if source is None or target is None:
            unknown = e.source if source is None else e.target
            out.append(f"(b) {unknown} is in no room ({', '.join(ROOMS)} or the faces): {e}")
        elif target > source:
            out.append(f"(b) upward import, {_room(e.source)} → {_room(e.target)}: {e}")
        if _is_stage(e.target) and (
                _is_stage(e.source) or not e.source.startswith(STAGE_IMPORTERS)):
            what = "a stage imports another stage" if _is_stage(e.source) else \
                "only graft.stages, graft.flows and graft.cli may import a stage"
            out.append(f"(c) {what}: {e}")
        if e.target == TEMPLATE or e.target.startswith(f"{TEMPLATE}."):
            out.append(f"(e) bundle_template is copied into bundles, never imported: {e}")
        elif e.source.startswith(f"{TEMPLATE}."):
            out.append(f"(e) bundle_template must run without Graft: {e}")
    if len(top_level) > MAX_TOP_LEVEL:
        out.append(f"(d) {len(top_level)} modules directly in src/{PACKAGE}/ (at most "
                   f"{MAX_TOP_LEVEL}): {', '.join(sorted(top_level))}")
    return out


def test_graft_keeps_its_house_rules() -> None:
    modules = graft_modules()
    assert {"graft.cli", "graft.flows", "graft.stages.finetune", "graft.core.config"} <= set(
        modules)  # the walk found the package
    edges = import_edges(modules)
    assert Edge("graft.stages.finetune", "graft.strategies", "") in {
        Edge(e.source, e.target, "") for e in edges}  # and its imports
    top_level = [p.name for p in (SRC / PACKAGE).glob("*.py")]
    found = breaches(edges, top_level)
    assert not found, "src/graft breaks its house rules:\n" + "\n".join(found)


def test_the_checker_reports_circles_upward_imports_and_the_other_breaches() -> None:
    def edge(source: str, target: str) -> Edge:
        return Edge(source, target, f"src/{source.replace('.', '/')}.py:1")

    fake = [
        edge("graft.core.config", "graft.core.files"),  # fine: the same room
        edge("graft.core.files", "graft.core.layout"),
        edge("graft.core.layout", "graft.core.config"),  # closes a circle of three
        edge("graft.models.heads", "graft.strategies.base"),  # upward
        edge("graft.stages.export", "graft.stages.evaluate"),  # stage → stage
        edge("graft.lifecycle.retrain", "graft.stages.ingest"),  # upward, and not a face
        edge("graft.deploy.bundle", "graft.deploy.bundle_template.predict"),
        edge("graft.cli", "graft.stages.finetune"),  # fine: a face imports a stage
        edge("graft.stages.finetune", "graft.strategies"),  # fine: downward
    ]
    found = breaches(fake, [f"m{i}.py" for i in range(7)])
    text = "\n".join(found)
    assert len(found) == 7, text
    circle = next(b for b in found if b.startswith("(a)"))
    assert all(f"src/graft/core/{a}.py:1 → graft.core.{b}" in circle
               for a, b in (("config", "files"), ("files", "layout"), ("layout", "config")))
    assert "(b) upward import, models → strategies: src/graft/models/heads.py:1 → " \
           "graft.strategies.base" in text
    assert "(b) upward import, lifecycle → stages: src/graft/lifecycle/retrain.py:1" in text
    assert "(c) a stage imports another stage: src/graft/stages/export.py:1 → " \
           "graft.stages.evaluate" in text
    assert "(c) only graft.stages, graft.flows and graft.cli may import a stage: " \
           "src/graft/lifecycle/retrain.py:1 → graft.stages.ingest" in text
    assert "(e) bundle_template is copied into bundles, never imported" in text
    assert "(d) 7 modules directly in src/graft/" in text
    assert breaches(fake[:2] + fake[-2:], ["cli.py"]) == []


def test_edges_resolve_modules_packages_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from .heads import x\n")
    (pkg / "models" / "heads.py").write_text("x = 1\n")
    (pkg / "models" / "ensemble.py").write_text(
        "from graft.models import heads, x\nimport numpy\n\ndef f():\n    import graft.cli\n")
    (pkg / "cli.py").write_text("")
    modules = graft_modules(tmp_path)
    edges = {(e.source, e.target) for e in import_edges(modules, tmp_path)}
    assert edges == {("graft.models", "graft.models.heads"),
                     ("graft.models.ensemble", "graft.models.heads"),
                     ("graft.models.ensemble", "graft.models"),
                     ("graft.models.ensemble", "graft.cli")}
