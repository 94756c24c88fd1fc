"""The package's import graph: no cycle (imports inside functions included), no cross-module private name.

Every ``import``/``from ... import`` statement of ``pipelines/`` is read with :mod:`ast`, wherever it sits
(module level, inside functions, under ``TYPE_CHECKING``), and resolved to the module it loads. An edge
``a -> b`` means module ``a`` imports module ``b``; a cycle is a strongly connected component of more than one
module. ``from pipelines.x import y`` where ``y`` is itself a module is an edge to ``pipelines.x.y``; package
``__init__`` modules are nodes like any other (they hold docstrings, so importing ``pipelines.x.y`` is not counted
as importing ``pipelines.x``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pipelines"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``name`` (a dotted name) denotes or lives in, ``None`` outside the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """Modules imported by ``path`` (anywhere in the file) and the private names it takes from other modules."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    edges: set[str] = set()
    private: list[str] = []
    bound: dict[str, str] = {}  # local name -> package module it refers to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    edges.add(target)
                    if alias.asname:
                        bound[alias.asname] = target
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = _resolve(node.module, modules)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    edges.add(sub)
                    bound[alias.asname or alias.name] = sub
                    continue
                edges.add(base)
                if alias.name.startswith("_") and not alias.name.startswith("__") and base != me:
                    private.append(f"{me}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and bound[node.value.id] != me
        ):
            private.append(f"{me}: {node.value.id}.{node.attr} ({bound[node.value.id]})")
    edges.discard(me)
    return edges, private


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    for name, path in modules.items():
        graph[name], found = _imports(path, modules)
        private += found
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    graph, _ = _graph()
    assert len(graph) > 50  # the whole package was read
    assert _cycles(graph) == []


def test_no_module_imports_another_modules_private_name() -> None:
    _, private = _graph()
    assert private == []


def test_checker_finds_a_cycle_and_a_private_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pipelines"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("def f():\n    from pipelines.a import two\n    return two._hidden\n")
    (pkg / "a" / "two.py").write_text("from pipelines.a.one import f\n_hidden = 1\n")
    (pkg / "three.py").write_text("from pipelines.a.two import _hidden\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    graph, private = _graph()
    assert _cycles(graph) == [["pipelines.a.one", "pipelines.a.two"]]
    assert sorted(private) == [
        "pipelines.a.one: two._hidden (pipelines.a.two)",
        "pipelines.three: from pipelines.a.two import _hidden",
    ]
