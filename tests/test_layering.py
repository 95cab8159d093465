"""Imports flow one way: runtime/ may import passes/, passes/ never imports runtime/ (not even
inside a function), and neither package has an import cycle; the zoo is built on the data layer,
which never imports the zoo (not even inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"passes": "ristretto_onnx.passes", "runtime": "ristretto_onnx.runtime"}


def _modules() -> dict[str, set[str]]:
    """Every module of passes/ and runtime/ with the ristretto_onnx modules it imports."""
    out: dict[str, set[str]] = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            imports = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imports.add(node.module)
                    imports.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    imports.update(a.name for a in node.names)
            out[name] = {i for i in imports if i.startswith("ristretto_onnx.")}
    return out


def test_passes_never_import_runtime():
    offenders = {m: sorted(i for i in imps if i.startswith("ristretto_onnx.runtime"))
                 for m, imps in _modules().items() if m.startswith("ristretto_onnx.passes")}
    assert not {m: i for m, i in offenders.items() if i}


def test_no_import_cycles_in_passes_and_runtime():
    modules = _modules()
    edges = {m: {i for i in imps if i in modules and i != m} for m, imps in modules.items()}
    # A package imports its modules' names through __init__; only module-to-module edges count.
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in edges[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_data_layer_never_imports_the_zoo():
    offenders = {}
    for path in (ROOT / "ristretto_onnx" / "data").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.startswith("ristretto_onnx.zoo") for n in names):
                offenders.setdefault(path.name, []).append(node.lineno)
    assert not offenders
