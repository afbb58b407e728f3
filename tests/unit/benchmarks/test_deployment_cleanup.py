"""The loopback deployment stops what it started by pid, including what a SIGKILLed
parent left running in a session of its own (as a SuperLink leaves its SuperExec and
``flwr-serverapp``), which killing the parent's process group misses."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from benchmarks.deployment import Deployment
from flsplit.processes import family, process_table, still_running

# A parent that starts a child in a new session (as Flower starts its SuperExec), then waits.
PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " start_new_session=True)\n"
    "time.sleep(120)\n"
)


def _spawned(pid: int, timeout: float = 20.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = family(pid, process_table())
        members.pop(pid, None)
        if members:
            return members
        time.sleep(0.1)
    raise AssertionError("the parent started no child")


def test_stop_ends_what_a_sigkilled_parent_left_in_its_own_session(tmp_path):
    deployment = Deployment(tmp_path)
    try:
        parent = deployment.start("parent", [sys.executable, "-c", PARENT])
        child = _spawned(parent.pid)
        deployment.track()
        assert set(child) <= set(deployment.seen)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # the old cleanup: the parent's group
        time.sleep(0.5)
        assert still_running(child), "the child followed its parent out after all"
        deployment.stop()
        assert not still_running(child)
    finally:
        for pid in still_running(deployment.seen):
            os.kill(pid, signal.SIGKILL)
