"""The ``flsplit`` command holds the user commands; benchmarks run as ``python -m``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from flsplit.cli import build_parser
from tests.paths import ROOT

USER_COMMANDS = {"simulate", "status", "plan", "gen-instance", "profile"}
BENCHMARKS = (
    "bandwidth",
    "chain",
    "compare_planners",
    "flower_apps",
    "cuts",
    "dataplane",
    "failures",
    "helper_memory",
    "helper_restart",
    "placement",
    "planned_chains",
    "planner",
    "sampling_compare",
    "sampling_experiment",
    "slow_loader",
)


def test_flsplit_help_lists_exactly_the_user_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == USER_COMMANDS
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in USER_COMMANDS:
        assert command in out
    assert "bench-" not in out and "compare-" not in out


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_has_its_own_command_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert f"python -m benchmarks.{name}" in capsys.readouterr().out


def test_python_m_benchmarks_runs_from_a_checkout() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sampling_experiment", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--straggler-fraction" in done.stdout
