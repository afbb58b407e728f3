"""Nothing lost when the SuperLink is SIGKILLed mid-run, on Flower's deployment engine.

The quickstart runs on a real ``flower-superlink`` with three client SuperNodes and one
helper (the cluster of :mod:`tests.e2e.test_deployment`) with ``checkpoint-dir`` and
``output-dir``. Once ``history.json`` holds round 2 the SuperLink is SIGKILLed, and so is
the ``flwr-serverapp`` it started: that one runs in a session of its own and outlives its
SuperLink (it would otherwise go on failing against a dead SuperLink), so the test finds
it among the SuperLink's descendants in ``/proc`` before the kill and kills it by pid.
A SuperLink started again (in-memory state, the default) no longer knows the SuperNodes:
their next heartbeat gets ``401 Unauthorized`` and they exit, so the whole cluster is
started again, and the same ``flwr run`` resumes from the checkpoint. Every process this
test starts is stopped by pid, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flsplit.protocol import TRAIN_LOSS
from flsplit.server.checkpoint import load_checkpoint
from tests.e2e.test_deployment import (
    NUM_CLIENTS,
    RUN_TIMEOUT,
    Cluster,
    free_ports,
    history,
    report_time,
    run_config,
)

ROUNDS = 3
KILLED_AFTER = 2  # rounds history.json holds when the SuperLink is killed


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of ``pid``, read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie is gone already, only not reaped
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_all(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL ``pids`` (processes this test started) and wait until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "a killed process did not go"


class ResumeCluster(Cluster):
    """The deployment tests' cluster, which can be started again after a crash."""

    def all_descendants(self) -> list[int]:
        return [d for proc in self.procs.values() for d in descendants(proc.pid)]

    def restart(self) -> None:
        """Stop what is left of the cluster (by pid) and start it again: a SuperLink on
        the same port, new SuperNodes. The old logs are kept as ``*.before.log``."""
        left = [p.pid for p in self.procs.values() if p.poll() is None]
        kill_all(left + self.all_descendants())
        for proc in self.procs.values():
            proc.wait(timeout=10)
        for path in self.logs.values():
            path.rename(path.with_suffix(".before.log"))
        self.procs, self.logs = {}, {}
        self._ports += free_ports(NUM_CLIENTS + 2)
        self.up()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ResumeCluster]:
    nodes = ResumeCluster(tmp_path)
    try:
        with nodes.logs_on_failure():
            nodes.up()
        yield nodes
    finally:
        # what the SuperLinks started in sessions of their own, which stop() cannot reach
        leftovers = nodes.all_descendants()
        nodes.stop()
        kill_all([p for p in leftovers if alive(p)])


def wait_for_round(path: Path, server_round: int, timeout: float, *watched) -> dict:
    """``history.json`` once it holds ``server_round``'s training (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            saved = json.loads(path.read_text())  # replaced atomically: never half a file
            if str(server_round) in saved["train"]:
                return saved
        for proc in watched:
            assert proc.poll() is None, f"{proc.args[0]} exited ({proc.returncode})"
        time.sleep(0.1)
    raise AssertionError(f"{path} did not reach round {server_round} within {timeout:.0f} s")


def test_a_superlink_killed_mid_run_loses_no_round_and_the_run_resumes(cluster):
    out, ckpt = cluster.tmp / "out", cluster.tmp / "ckpt"
    config = run_config(out, ROUNDS, 60.0) + f" checkpoint-dir='{ckpt}'"
    with cluster.logs_on_failure():
        start = time.monotonic()
        run = cluster.flwr_run(config)
        superlink = cluster.procs["superlink"]
        wait_for_round(out / "history.json", KILLED_AFTER, RUN_TIMEOUT, run, superlink)
        serverapps = descendants(superlink.pid)
        os.kill(superlink.pid, signal.SIGKILL)
        superlink.wait(timeout=10)
        kill_all(serverapps)  # the ServerApp dies with it, as on a machine that went down
        killed_at = time.monotonic() - start
        kill_all([run.pid])
        run.wait(timeout=10)

        # Nothing lost: every round the checkpoint holds is in history.json, and only those.
        saved = load_checkpoint(ckpt)
        assert saved is not None and saved.server_round >= KILLED_AFTER
        done = saved.server_round
        assert done < ROUNDS, "the run finished before the SuperLink was killed"
        before = history(out)
        assert set(before["train"]) == {str(r) for r in range(1, done + 1)}
        assert set(before["server"]) == {str(r) for r in range(done + 1)}
        report_time(f"SuperLink SIGKILLed after round {done}", killed_at)

        # The cluster started again; the run resumes with a longer round-timeout (a
        # timeout may change across a resume).
        restart = time.monotonic()
        cluster.restart()
        log = cluster.finish(
            cluster.flwr_run(run_config(out, ROUNDS, 90.0) + f" checkpoint-dir='{ckpt}'"),
            RUN_TIMEOUT,
        )
        report_time(f"resumed run, rounds {done + 1}-{ROUNDS}", time.monotonic() - restart)

        assert f"resuming from {ckpt} after round {done} of {ROUNDS}" in log, log[-3000:]
        assert "Strategy execution finished" in log
        after = history(out)
        assert set(after["train"]) == {str(r) for r in range(1, ROUNDS + 1)}
        assert set(after["server"]) == {str(r) for r in range(ROUNDS + 1)}
        for r in map(str, range(1, done + 1)):  # the rounds before the kill, as they were
            assert after["train"][r] == before["train"][r]
            assert after["server"][r] == before["server"][r]
        assert after["train"][str(ROUNDS)][TRAIN_LOSS] < after["train"]["1"][TRAIN_LOSS]
        assert load_checkpoint(ckpt).server_round == ROUNDS
