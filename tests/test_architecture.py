"""The layers hold: no import cycles among cstbatch's modules (imports inside functions count),
lower layers never import upper ones, a small package root, and old module paths still import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cstbatch"

#: layer -> layers it may import (besides itself and the root's foundation modules)
ALLOWED = {
    "study": set(),
    "outputs": {"study"},
    "steps": {"study", "outputs"},
    "sample": {"study", "steps"},
    "engine": {"study", "outputs", "steps", "sample"},
    "cluster": {"study", "outputs", "engine"},
}
FOUNDATION = {"cstbatch.errors", "cstbatch.atomic", "cstbatch.hookspecs", "cstbatch.plugins", "cstbatch._version"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> cstbatch modules it imports anywhere in its body (a package face counts as its
    package; ``from pkg import mod`` as ``pkg.mod``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{path}: relative import"
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    # the package face re-exports the public API; it is the top, not part of any layer
    graph = {m: {d for d in deps if d != "cstbatch"} for m, deps in graph.items() if m != "cstbatch"}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_downwards():
    problems = []
    for module, deps in import_graph().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in ALLOWED:
            continue
        layer = parts[1]
        for dep in deps:
            dep_parts = dep.split(".")
            if dep in FOUNDATION or dep == "cstbatch" or dep_parts[1] == layer:
                continue
            if dep_parts[1] not in ALLOWED[layer]:
                problems.append(f"{module} -> {dep}")
    assert problems == []


def test_package_root_is_small():
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 12, root_modules


@pytest.mark.parametrize("old,new", [("cstbatch.atlas", "cstbatch.steps.atlas"),
                                     ("cstbatch.layout", "cstbatch.outputs.layout"),
                                     ("cstbatch.step_runner", "cstbatch.engine.step_runner")])
def test_old_module_paths_alias_the_new_ones_with_a_warning(old, new):
    code = (f"import warnings, importlib; warnings.simplefilter('error');\n"
            f"import {new} as n\n"
            f"try:\n    importlib.import_module('{old}')\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
            f"warnings.simplefilter('ignore')\nimport {old} as o\nprint(o is n)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"warned {old} has moved to {new}" in out
    assert out.strip().endswith("True")
