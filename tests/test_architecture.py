"""The package's import graph, read from the source: layered, without cycles, without private names
crossing modules, and without the package importing itself from inside functions (docs/design.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sinecompress"

# Layers, lowest first: a module may import from its own layer or lower ones, never from higher ones.
LAYERS = [
    {"errors", "version", "dtypes", "weights", "signals", "config", "matching", "progress", "heap"},
    {"fit", "io"},
    {"nn", "calib"},
    {"pipeline", "scratch", "adapters", "integrations"},
    {"recipe", "report"},
    {"cli", "__main__"},
]


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _graph():
    modules = {}
    for path in sorted(PKG.rglob("*.py")):
        modules[_module(path)] = (path, ast.parse(path.read_text()))
    edges, private, inner = {}, [], []
    for mod, (path, tree) in modules.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in modules:
                        deps.add(sub)
                    elif target in modules:
                        deps.add(target)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            private.append(f"{mod} imports {target}.{a.name}")
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        # imports of the package's own modules inside functions hide cycles; only the integrations, which
        # import their library's heavy machinery, are imported when used
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sinecompress")) \
                            and not _resolve(mod, is_pkg, node).startswith("sinecompress.integrations"):
                        inner.append(f"{mod}:{node.lineno} imports {node.module or '.'} inside {fn.name}()")
        deps.discard(mod)
        edges[mod] = deps
    return modules, edges, private, inner


def _layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return len(LAYERS)  # the package root sees everything


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in edges:
        if v not in index:
            visit(v)
    return out


MODULES, EDGES, PRIVATE, INNER = _graph()


def _without_package_inits(edges):
    """A package's __init__ re-exports its submodules: importing it is importing them, not a cycle."""
    return {m: {d for d in deps if not (m.startswith(d + ".") and d in MODULES)} for m, deps in edges.items()}


def test_no_import_cycles():
    assert _cycles(_without_package_inits(EDGES)) == []


def test_no_private_names_cross_modules():
    assert PRIVATE == []


def test_no_package_imports_inside_functions():
    assert INNER == []


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m.count(".") >= 1))
def test_imports_flow_down_the_layers(mod):
    up = sorted(d for d in EDGES[mod] if d.startswith("sinecompress.") and _layer(d) > _layer(mod))
    assert up == [], f"{mod} (layer {_layer(mod)}) imports from higher layers: {up}"
