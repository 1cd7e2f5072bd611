"""The package's import graph has no cycle and never imports upward.

Each module sits on a floor and may import only its own floor and those below it; within a
floor, modules may import each other but never in a circle. Every import that runs counts, the
ones inside functions too: a late import hides a dependency, it does not remove it. Imports
under `if TYPE_CHECKING:` only name types for annotations and never run, so they do not count
(a seam's plug-in module names the config type it is handed, which sits above it). The graph is
read from the source with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "gpushare"

FLOORS: tuple[tuple[str, ...], ...] = (
    ("gpushare", "core", "config_file", "errors", "interrupts", "registry", "strict"),  # the ground floor
    ("load.lengths", "load.tokens", "load.sharegpt", "load.workloads", "serving.engines", "serving.sharing",
     "serving.mig"),  # the seams' registered config types and classes, which the scenario is built from, and
    # the MIG arithmetic and discovery the sharing modes use
    ("config", "plan_config"),  # what a scenario says, what a plan file says
    ("measure",),  # metrics, summaries, the run folder's files
    ("load",),  # the request source and the load generator
    ("serving",),  # servers, sharing modes, MPS, MIG
    ("environment",),  # what env.json records of the machine and its engines
    ("experiment",),  # a run, a matrix, the interference protocol
    ("fleet",),  # a matrix's cells over GPUs and nodes
    ("reporting",),  # tables, figures, the report
    ("cli",),
)
"""Lowest first. A module's floor is that of the longest name here that is it or a package
holding it (names under gpushare; the package itself is on the ground floor)."""

def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


Graph = dict[str, set[str]]
"""Each module and the package's modules it imports."""


def imported(name: str, source: str, package: str) -> set[str]:
    """The package's modules that module `name` (of `package`) imports, anywhere in `source`
    but under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}  # `from . import mps`
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        todo.extend(ast.iter_child_nodes(node))
    return {target for target in found if target in MODULES and target != name}


def graph() -> Graph:
    return {name: imported(name, path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0])
            for name, path in MODULES.items()}


def floor(module: str) -> int:
    parts = module.split(".")[1:]
    for length in range(len(parts), 0, -1):
        name = ".".join(parts[:length])
        for i, names in enumerate(FLOORS):
            if name in names:
                return i
    return 0  # the package itself


def upward(edges: Graph) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in edges.items() for b in targets if floor(b) > floor(a)}


def reachable(edges: Graph, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in edges[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def cycles(edges: Graph) -> list[set[str]]:
    """Each set of modules that import each other round a circle (the graph's strongly connected parts)."""
    reach = {name: reachable(edges, name) for name in edges}
    groups = {frozenset({name} | {other for other in reach[name] if name in reach[other]})
              for name in edges if name in reach[name]}
    return [set(group) for group in groups]


def test_every_module_has_a_floor():
    placed = {name for names in FLOORS for name in names}
    assert sorted({m.split(".")[1] for m in MODULES if "." in m} - placed) == []
    assert sorted(name for name in placed - {"gpushare"} if f"gpushare.{name}" not in MODULES) == []


def test_no_module_imports_a_floor_above_its_own():
    assert sorted(upward(graph())) == []


def test_no_import_cycles():
    assert [sorted(group) for group in cycles(graph())] == []


@pytest.mark.parametrize("source, broken", [
    ("from . import analysis\n", "cycles"),  # isolation back to analysis, at the top
    ("def later():\n    from .analysis import analyze\n", "cycles"),  # and late
    ("from ..cli import app\n", "upward"),
])
def test_the_check_sees_cycles_and_upward_imports_late_ones_too(source, broken):
    """reporting/isolation.py with one more import, as the check reads it."""
    edges = graph()
    edges["gpushare.reporting.isolation"] |= imported("gpushare.reporting.isolation", source, "gpushare.reporting")
    if broken == "cycles":
        assert {"gpushare.reporting.analysis", "gpushare.reporting.isolation"} <= set().union(*cycles(edges))
    else:
        assert ("gpushare.reporting.isolation", "gpushare.cli") in upward(edges)

