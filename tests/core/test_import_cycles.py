"""No import cycle between the core's modules. Read with ``ast``: the module-level imports of
every module of ``mlx_zoo`` (``if TYPE_CHECKING:`` blocks aside) must form no cycle; neither
may the imports inside functions of the modules outside :data:`LAZY_ALLOWED` (a cycle hidden in
a function is still a cycle: it only moves the failure to run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mlx_zoo

CORE = Path(mlx_zoo.__file__).resolve().parent
LAZY_ALLOWED = ("mlx_zoo.serve",)
"""Packages whose imports inside functions are not checked (the server's ASGI app imports its
package lazily on purpose)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The core modules an import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return {m for m in [target] + [f"{target}.{a.name}" for a in node.names] if m in modules}


def import_graph(lazy: bool) -> dict[str, set[str]]:
    """module -> the core modules it imports (at module level; with ``lazy`` also in
    functions), package ``__init__`` edges left out (importing ``mlx_zoo.x`` runs it first)."""
    paths = {module_name(p): p for p in CORE.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if lazy and not name.startswith(LAZY_ALLOWED):
            nodes = list(ast.walk(tree))
        else:
            nodes = [n for n in tree.body if not isinstance(n, ast.If)]  # TYPE_CHECKING blocks
        deps: set[str] = set()
        for node in nodes:
            deps |= imported(node, package, modules)
        graph[name] = {d for d in deps if d != name and d != "mlx_zoo"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done, stack = [], set(), []

    def visit(node: str) -> None:
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep in stack:
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in done:
                visit(dep)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node)
    return found


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "in-functions-too"])
def test_no_import_cycle_between_core_modules(lazy):
    graph = import_graph(lazy)
    assert "mlx_zoo.sources" in graph and "mlx_zoo.demos" in graph["mlx_zoo.sources"]
    assert not cycles(graph), cycles(graph)


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
