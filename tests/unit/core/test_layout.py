"""The layout's rules: no import cycle, and no protocol key spelled outside the protocol."""

from __future__ import annotations

import ast
from pathlib import Path

from flsplit import protocol
from flsplit.config import DEFAULT_RUN_CONFIG
from tests.paths import ROOT

PACKAGES = ("flsplit", "strategies")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions too
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found |= {name for name in names if name in modules}
    return found


def test_no_import_cycle_in_the_installed_packages():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name):], name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def _protocol_keys() -> set[str]:
    """Message types and record keys: the protocol's compound string constants
    (``TRAIN_LOSS``, ...)
    and the hyphenated keys its dataclasses read and write, less run-config keys (which a
    train config also carries)."""
    constants = {
        value
        for name, value in vars(protocol).items()
        # compound ones: single words (``arrays``, ``fwd``) are everyday names too
        if name.isupper() and isinstance(value, str) and any(c in value for c in "-._")
    }
    tree = ast.parse((ROOT / "flsplit" / "protocol.py").read_text())
    hyphenated = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "-" in node.value
        and " " not in node.value
    }
    return (constants | hyphenated) - set(DEFAULT_RUN_CONFIG) - set(protocol.ROLES)


def test_no_message_type_or_record_key_is_spelled_outside_the_protocol_module():
    keys = _protocol_keys()
    assert {"train.helper", "num-examples", "round-token", "stage1-ms"} <= keys
    # A user's own Flower app (the conversion example) writes Flower's metric keys itself.
    skip = {
        ROOT / "flsplit" / "protocol.py",
        ROOT / "tests" / "e2e" / "flower_app" / "app.py",
        Path(__file__).resolve(),
    }
    offenders = []
    for folder in (*PACKAGES, "benchmarks", "tests", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in skip:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in keys:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, "\n".join(offenders)
