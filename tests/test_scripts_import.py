"""Benchmarks, examples and the docs' Python snippets are read by people and rerun by them: every name they
import from the package must exist (a refactor that moves a module must move their imports too)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")])


DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md")])


def missing_imports(source: str, where: str) -> list[str]:
    missing = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sinecompress"):
            try:
                mod = importlib.import_module(node.module)
            except ImportError as e:
                missing.append(f"line {node.lineno}: {node.module} ({e})")
                continue
            missing += [f"line {node.lineno}: {node.module}.{a.name}" for a in node.names
                        if a.name != "*" and not hasattr(mod, a.name)
                        and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("sinecompress.") and importlib.util.find_spec(a.name) is None:
                    missing.append(f"line {node.lineno}: {a.name}")
    return missing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_package_imports_resolve(script):
    missing = missing_imports(script.read_text(), str(script))
    assert not missing, f"{script.name}: " + "; ".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_snippets_parse_and_import_real_names(doc):
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    missing = [f"block {i}: {m}" for i, b in enumerate(blocks) for m in missing_imports(b, f"{doc.name} block {i}")]
    assert not missing, f"{doc.name}: " + "; ".join(missing)
