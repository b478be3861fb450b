"""The package's import graph has no cycles: each module imports only modules below it (docs/explanation.md,
"Code map").

Counted: every ``import``/``from ... import`` of one package module by another, at module level *and* inside
functions. Function-local imports are there to keep importing cheap (nnU-Net imports every module of the
``nnUNet_extTrainer`` folder while it looks up a trainer; torch, nnU-Net and the heavier modules load on first
use), never to hide a cycle, so they count. Not counted: imports under ``if TYPE_CHECKING:`` (type hints, never
executed) and the edges in ``LEGACY_ENTRY_POINTS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnunetv2_rndpo"

# (importer, imported): ``datasets.main`` is the console-script entry point that scripts installed before
# ``nnUNetv2_rndpo_make_dataset`` moved to ``commands.main_make_dataset`` still name; it goes with the next
# release, once every installation has rerun ``pip install -e .``.
LEGACY_ENTRY_POINTS = {("datasets", "commands")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_modules(node: ast.AST, modules: set[str]) -> set[str]:
    """Package modules imported anywhere in ``node``'s subtree, outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            found |= set().union(*(_imported_modules(n, modules) for n in child.orelse))
            continue
        names: list[str] = []
        if isinstance(child, ast.Import):
            names = [alias.name for alias in child.names]
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nnunetv2_rndpo" and len(parts) > 1 and parts[1] in modules:
                found.add(parts[1])
        found |= _imported_modules(child, modules)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: package modules it imports}`` for every module of the package (names without the prefix)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {}
    for module in sorted(modules):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        graph[module] = _imported_modules(tree, modules) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_function_local_imports():
    graph = import_graph()
    assert "pipeline" in graph["commands"]  # commands import the pipeline inside their run_* functions only
    assert "proposals" not in graph["mining"]  # mining names ProposalCache under TYPE_CHECKING only


def test_the_package_import_graph_has_no_cycles():
    graph = import_graph()
    for importer, imported in LEGACY_ENTRY_POINTS:
        assert imported in graph[importer], f"{importer} -> {imported} is gone: remove it from LEGACY_ENTRY_POINTS"
        graph[importer].discard(imported)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
