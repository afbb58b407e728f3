"""``flsplit simulate APP``: the app's own ServerApp and ClientApp through ``flwr run``, on a
local SuperLink that the command starts for the run and stops, by process id, however the
run ends; a SuperLink it did not start is left alone.

Each test runs the command in a subprocess, as a user would, from a temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flsplit.launch import LocalSuperLink
from tests.paths import ROOT

FLOWER_APP = ROOT / "tests" / "e2e" / "flower_app"
QUICKSTART = ROOT / "examples" / "quickstart"
RUN_TIMEOUT = 240.0  # seconds one `flsplit simulate` may take before the test fails


def _command(app: Path, *run_config: str) -> list[str]:
    items = [arg for item in run_config for arg in ("--run-config", item)]
    return [sys.executable, "-m", "flsplit.cli", "simulate", str(app), *items]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not Path("/proc").exists()
    return state != "Z"


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The ``pids`` still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _started(log: str) -> tuple[int, list[int]]:
    """The SuperLink's pid and the Ray actors' pids the run's log names."""
    found = re.search(r"local SuperLink pid (\d+) on", log)
    assert found, log[-3000:]
    actors = sorted({int(p) for p in re.findall(r"ClientAppActor pid=(\d+)", log)})
    return int(found.group(1)), actors


@pytest.fixture
def their_superlink(tmp_path: Path) -> Iterator[LocalSuperLink]:
    """A SuperLink someone else started before the command ran (stopped by pid here)."""
    theirs = LocalSuperLink(tmp_path / "theirs")
    theirs.start()
    try:
        yield theirs
    finally:
        theirs.stop()


def test_a_converted_flower_app_runs_its_own_server_app_and_the_superlink_is_stopped(
    tmp_path: Path, their_superlink: LocalSuperLink
):
    workdir = tmp_path / "run"
    workdir.mkdir()
    start = time.monotonic()
    run = subprocess.run(
        _command(FLOWER_APP),
        cwd=workdir,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    print(f"\nflsplit simulate tests/e2e/flower_app: {time.monotonic() - start:.1f} s wall")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    # the federation flsplit sized from the app's config: 1 helper + 2 clients, all at once
    assert "num-supernodes=3 init-args-num-cpus=3 client-resources-num-cpus=1" in log
    assert "discovery: 2 clients, 1 helpers" in log
    assert "round 2: 2/2 client updates aggregated" in log
    # what only the app's own ServerApp does: print this and save its model where the
    # command ran (flsplit's make_server_app does neither)
    assert "Saving final model to disk..." in log
    saved = torch.load(workdir / "final_model.pt", weights_only=True)
    assert set(saved) >= {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert re.search(r"flsplit simulate: run \d+ finished:completed", log)
    superlink, actors = _started(log)
    assert actors, "the log names no ClientApp actor"
    assert not _gone([superlink, *actors]), "processes of the run outlived the command"
    assert their_superlink.proc is not None and their_superlink.proc.poll() is None


def test_a_failed_run_exits_non_zero_and_stops_the_superlink(tmp_path: Path):
    run = subprocess.run(
        _command(QUICKSTART, "cuts='nope,fc2' num-helpers=1 num-clients=1"),
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 1, log[-3000:]  # `flwr run --stream` itself exited 0
    assert re.search(r"run \d+ finished:failed: .*invalid cut 'nope'", log), log[-3000:]
    superlink, actors = _started(log)
    assert not _gone([superlink, *actors])


def test_ctrl_c_stops_the_run_and_the_superlink(tmp_path: Path):
    proc = subprocess.Popen(
        _command(QUICKSTART, "num-server-rounds=50 num-helpers=1 num-clients=2"),
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # interrupted once the clients train
            lines.append(line)
            if "aggregate_train: Received" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines) + rest
    assert proc.returncode == 130, log[-3000:]
    assert "flsplit simulate: interrupted" in log
    superlink, actors = _started(log)
    assert actors
    assert not _gone([superlink, *actors])
