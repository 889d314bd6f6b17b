"""graphs/: the package's import graph. Its modules form no cycle (html used to import
render and render html), and the drawing side never pulls in ctxmon.* or
prometheus_client, directly or through what it imports."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "graphs")
# Every module of the package: none may import ctxmon.* or prometheus_client at all
# (the daemon and `ctxmon graph` hand the renderer its settings).
PURE = ("graphs", "graphs.data", "graphs.plan", "graphs.charts", "graphs.paint", "graphs.legend",
        "graphs.html", "graphs.run", "graphs.alertstate", "graphs.settings", "graphs.worker",
        "graphs.client", "graphs.render", "graphs.__main__", "graphs.agg")


def imports_of(path: str, module: str) -> set[str]:
    """Every module `path` imports, anywhere in it (function bodies too), absolute."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                out.add(target)
                if not node.module:  # `from . import html`: each name may be a module
                    out.update(f"{base}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
    return out


def package_graph() -> dict[str, set[str]]:
    modules = {}
    for name in os.listdir(PACKAGE):
        if name.endswith(".py"):
            mod = "graphs" if name == "__init__.py" else f"graphs.{name[:-3]}"
            modules[mod] = os.path.join(PACKAGE, name)
    return {mod: {i for i in imports_of(path, mod) if i in modules and i != mod}
            for mod, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graphs_modules_import_no_cycle():
    graph = package_graph()
    assert {"graphs.data", "graphs.plan", "graphs.charts", "graphs.paint", "graphs.run",
            "graphs.html"} <= set(graph)
    assert find_cycle(graph) is None
    assert "graphs.run" not in graph["graphs.html"]  # pages are drawn from plain data


def test_drawing_side_imports_neither_ctxmon_nor_prometheus_client():
    graph = package_graph()
    assert set(PURE) == set(graph), "a new module of graphs/ belongs in PURE"
    for mod in PURE:
        path = os.path.join(ROOT, "graphs", "__init__.py") if mod == "graphs" else \
            os.path.join(ROOT, *mod.split(".")) + ".py"
        direct = imports_of(path, mod)
        assert not {i for i in direct if i.split(".")[0] in ("ctxmon", "prometheus_client")}, mod
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {PURE!r}]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ctxmon', 'prometheus_client')))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
