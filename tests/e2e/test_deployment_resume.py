"""Nothing lost when the SuperLink is SIGKILLed mid-run, on Flower's deployment engine.

The quickstart runs on a real ``flower-superlink`` with three client SuperNodes and one
helper (:class:`benchmarks.deployment.Deployment`, as in :mod:`tests.e2e.test_deployment`)
with ``checkpoint-dir`` and ``output-dir``. Once ``history.json`` holds round 1 the
SuperLink is SIGKILLed, and so is the ``flwr-serverapp`` it started: that one runs in a
session of its own and outlives its SuperLink (it would otherwise go on failing against a
dead SuperLink), so the deployment kills the SuperLink's whole process family by pid.
A SuperLink started again (in-memory state, the default) no longer knows the SuperNodes:
their next heartbeat gets ``401 Unauthorized`` and they exit, so the whole cluster is
started again, and the same ``flwr run`` resumes from the checkpoint. Every process this
test starts is stopped by pid, never by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.deployment import Deployment, deployment_available
from flsplit.protocol import TRAIN_LOSS
from flsplit.server.checkpoint import load_checkpoint
from tests.e2e.test_deployment import NUM_CLIENTS, RUN_TIMEOUT, history, report_time, small_run

pytestmark = pytest.mark.skipif(
    not deployment_available(),
    reason="Flower's deployment executables are not installed next to this Python",
)

# One round before the kill and one after the resume: every check below (the rounds before
# the kill kept as they were, the resumed round run from the checkpoint) needs no more.
ROUNDS = 2
KILLED_AFTER = 1  # rounds history.json holds when the SuperLink is killed


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[list[Deployment]]:
    """The deployments a test starts (the first, and the one started after the crash);
    every process of each stopped by pid at the end."""
    started: list[Deployment] = []
    try:
        yield started
    finally:
        for deployment in started:
            deployment.stop()


def up(clusters: list[Deployment], workdir: Path) -> Deployment:
    workdir.mkdir(parents=True)
    nodes = Deployment(workdir)
    clusters.append(nodes)
    with nodes.logs_on_failure():
        nodes.up(helpers=1, clients=NUM_CLIENTS)
    return nodes


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


def test_a_superlink_killed_mid_run_loses_no_round_and_the_run_resumes(clusters, tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    cluster = up(clusters, tmp_path / "first")
    config = small_run(out, ROUNDS, 60.0) + f" checkpoint-dir='{ckpt}'"
    with cluster.logs_on_failure():
        start = time.monotonic()
        run = cluster.flwr_run(config)
        superlink = cluster.procs["superlink"]
        wait_for_round(out / "history.json", KILLED_AFTER, RUN_TIMEOUT, run, superlink)
        # the SuperLink and the ServerApp it started die at once, as on a machine gone down
        cluster.kill("superlink")
        killed_at = time.monotonic() - start
        cluster.stop()  # the SuperNodes and the `flwr run` left behind

    # Nothing lost: every round the checkpoint holds is in history.json, and only those.
    saved = load_checkpoint(ckpt)
    assert saved is not None and saved.server_round >= KILLED_AFTER
    done = saved.server_round
    assert done < ROUNDS, "the run finished before the SuperLink was killed"
    before = history(out)
    assert set(before["train"]) == {str(r) for r in range(1, done + 1)}
    assert set(before["server"]) == {str(r) for r in range(done + 1)}
    report_time(f"SuperLink SIGKILLed after round {done}", killed_at)

    # A SuperLink started again (in-memory state) no longer knows the old SuperNodes, so
    # the whole cluster starts again; the run resumes with a longer round-timeout (a
    # timeout may change across a resume).
    restart = time.monotonic()
    again = up(clusters, tmp_path / "second")
    with again.logs_on_failure():
        log = again.finish(
            again.flwr_run(small_run(out, ROUNDS, 90.0) + f" checkpoint-dir='{ckpt}'"),
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
