"""The planner's imports: no torch, Flower or gRPC, no cycle, no private names across modules.

``flsplit.plan`` runs on the server and in the command line without the training stack,
so importing any of its modules must not pull torch, flwr or grpc in (also not through
``flsplit.model.presets``). Its modules depend one way: a cycle, even through an import
inside a function, makes the import order matter and hides a missing split of concepts.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT

PACKAGE = "flsplit.plan"
PACKAGE_DIR = ROOT / "flsplit" / "plan"
FORBIDDEN = ("torch", "flwr", "grpc")


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the plan package (packages included)."""
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every import in ``path``, at any depth.

    Relative imports are resolved against ``name``; ``from pkg import sub`` where ``sub``
    is a module counts as importing ``pkg.sub``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            found.append((module, names))
            found += [(f"{module}.{n}", []) for n in names if f"{module}.{n}" in modules]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {module for module, _ in _imports(name, path, modules)}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_torch_flwr_or_grpc_on_import():
    script = (
        "import importlib, pkgutil, sys\n"
        f"import {PACKAGE} as package\n"
        f"for info in pkgutil.walk_packages(package.__path__, '{PACKAGE}.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing {PACKAGE} loads {done.stdout.strip()}"


def test_walk_covers_every_module():
    # the subprocess test walks the package; a module pkgutil does not see (no
    # __init__.py in its folder) would escape it
    folders = {p.parent for p in PACKAGE_DIR.rglob("*.py")}
    assert all((folder / "__init__.py").exists() for folder in folders)


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 30  # the walk found the package
    assert _cycles(graph) == []


def test_cycle_finder_sees_imports_inside_functions(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from flsplit.plan.cuts import optimize\n")
    modules = {"flsplit.plan.cuts.optimize": source}
    assert ("flsplit.plan.cuts.optimize", []) in _imports("flsplit.plan.x", source, modules)


def test_no_private_names_across_modules():
    modules = _modules()
    private = [
        f"{name} imports {module}.{n}"
        for name, path in modules.items()
        for module, names in _imports(name, path, modules)
        if module.startswith(PACKAGE) and module != name
        for n in names if n.startswith("_")
    ]
    assert private == []
