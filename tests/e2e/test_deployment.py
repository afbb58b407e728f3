"""End to end on Flower's deployment engine, on loopback only.

A real ``flower-superlink``, three client SuperNodes and one helper SuperNode (told apart
by ``--node-config``) run as separate processes; the quickstart app is submitted with
``flwr run examples/quickstart <connection> --stream``, the connection being written to a
temporary ``FLWR_HOME``'s ``config.toml`` (nothing in the user's ``~/.flwr`` is read or
written). Every process runs in its own process group; the fixture stops exactly the
processes it started, by pid, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flsplit.protocol import CLIENT_TRAIN, HELPER_TRAIN, TEST_ACC, TEST_LOSS, TRAIN_LOSS
from tests.paths import ROOT

QUICKSTART = ROOT / "examples" / "quickstart"
BIN = Path(sys.executable).parent
CONNECTION = "flsplit-test"
NUM_CLIENTS = 3
RUN_TIMEOUT = 240.0  # seconds a whole `flwr run` may take before the test fails
LOG = logging.getLogger("flsplit.tests.deployment")

pytestmark = pytest.mark.skipif(
    not all((BIN / exe).exists() for exe in ("flower-superlink", "flower-supernode", "flwr")),
    reason="Flower's deployment executables are not installed next to this Python",
)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Cluster:
    """A SuperLink and SuperNodes on loopback, each in its own process group."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        home = tmp / "home"
        flwr_home = tmp / "flwr-home"
        home.mkdir()
        flwr_home.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "FLWR_HOME": str(flwr_home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        self.superlink_port, *self._ports = free_ports(2 * NUM_CLIENTS + 4)
        (flwr_home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "127.0.0.1:{self.superlink_port}"\n'
            "insecure = true\n"
        )

    def port(self) -> int:
        return self._ports.pop()

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start ``args`` in a new process group, its output going to ``<name>.log``."""
        log_path = self.tmp / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.tmp,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.logs[name] = log_path
        return proc

    def wait_for(self, name: str, pattern: str, timeout: float, *also: str) -> None:
        """Wait until ``name``'s log matches ``pattern``; fail if it (or any of ``also``)
        exits first, or on timeout."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            if regex.search(self.logs[name].read_text(errors="replace")):
                return
            for watched in (name, *also):
                if self.procs[watched].poll() is not None:
                    raise AssertionError(f"{watched} exited ({self.procs[watched].returncode})")
            time.sleep(0.2)
        raise AssertionError(f"{name}: no {pattern!r} in its log within {timeout:.0f} s")

    def up(self) -> None:
        """SuperLink, ``NUM_CLIENTS`` client SuperNodes and one helper, all registered."""
        self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host=127.0.0.1",
                f"--port={self.superlink_port}",
                "--disable-runtime-dependency-installation",
            ],
        )
        self.wait_for("superlink", r"Uvicorn running on", 60)
        nodes = {
            f"client{i}": f'role="client" partition-id={i} num-partitions={NUM_CLIENTS}'
            for i in range(NUM_CLIENTS)
        }
        nodes["helper0"] = f'role="helper" data-address="127.0.0.1:{self.port()}"'
        for name, node_config in nodes.items():
            self.start(
                name,
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    f"--superlink=127.0.0.1:{self.superlink_port}",
                    f"--port={self.port()}",
                    "--node-config",
                    node_config,
                ],
            )
        for name in nodes:
            self.wait_for(name, r"SuperNode ID: \d+", 90)

    def flwr_run(self, run_config: str) -> subprocess.Popen:
        """Submit the quickstart with ``flwr run`` and stream its log to ``flwr-run.log``."""
        return self.start(
            "flwr-run",
            [
                str(BIN / "flwr"),
                "run",
                str(QUICKSTART),
                CONNECTION,
                "--stream",
                "--run-config",
                run_config,
            ],
        )

    def finish(self, proc: subprocess.Popen, timeout: float) -> str:
        """Wait (bounded) for ``proc`` to exit and return the ``flwr run`` log."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flwr run did not finish within {timeout:.0f} s") from None
        return self.logs["flwr-run"].read_text(errors="replace")

    def report(self) -> str:
        return "\n".join(
            f"===== {name} (pid {self.procs[name].pid}, exit {self.procs[name].poll()}): "
            f"{path}\n{tail(path)}"
            for name, path in self.logs.items()
        )

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            print(self.report(), file=sys.stderr)
            raise

    def stop(self) -> None:
        """Stop exactly the processes started here: terminate, wait, then kill, by pid."""
        running = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Each process led its own group: what it spawned (SuperExec, app processes)
        # follows its parent out on its own; anything still left in those groups goes too.
        time.sleep(0.5)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path)
    start = time.monotonic()
    try:
        with nodes.logs_on_failure():
            nodes.up()
        report_time("SuperLink and 4 SuperNodes up", time.monotonic() - start)
        yield nodes
    finally:
        start = time.monotonic()
        nodes.stop()
        report_time("processes stopped", time.monotonic() - start)


def group_empties(pgid: int, timeout: float) -> bool:
    """Whether process group ``pgid`` (one this test created) has no process left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def run_config(output_dir: Path, rounds: int, round_timeout: float) -> str:
    return (
        f"num-server-rounds={rounds} num-clients={NUM_CLIENTS} num-helpers=1 "
        f"round-timeout={round_timeout:.1f} call-deadline=30.0 fraction-evaluate=0.0 "
        f"output-dir='{output_dir}'"
    )


def history(output_dir: Path) -> dict:
    path = output_dir / "history.json"
    assert path.exists(), f"the ServerApp wrote no {path}"
    return json.loads(path.read_text())


def report_time(what: str, seconds: float) -> None:
    LOG.info("%s: %.1f s wall", what, seconds)
    print(f"\n{what}: {seconds:.1f} s wall")


def test_quickstart_runs_on_superlink_and_supernodes_and_learns(cluster: Cluster):
    out = cluster.tmp / "out"
    with cluster.logs_on_failure():
        start = time.monotonic()
        log = cluster.finish(cluster.flwr_run(run_config(out, 2, 60.0)), RUN_TIMEOUT)
        report_time("deployment run, 2 rounds", time.monotonic() - start)

        assert cluster.procs["flwr-run"].returncode == 0, log[-2000:]
        assert "Strategy execution finished" in log
        assert re.search(r"discovery: 3 clients, 1 helpers", log)
        for rnd in (1, 2):
            assert f"round {rnd}: 3/3 client updates aggregated" in log
        result = history(out)
        assert set(result["train"]) == {"1", "2"}
        assert result["train"]["2"][TRAIN_LOSS] < result["train"]["1"][TRAIN_LOSS]
        server = result["server"]
        assert server["2"][TEST_ACC] > server["1"][TEST_ACC] > server["0"][TEST_ACC]
        assert server["2"][TEST_LOSS] < server["1"][TEST_LOSS]
        helper_log = cluster.logs["helper0"].read_text(errors="replace")
        assert HELPER_TRAIN in helper_log
        for i in range(NUM_CLIENTS):
            assert CLIENT_TRAIN in cluster.logs[f"client{i}"].read_text(errors="replace")


def test_a_client_supernode_killed_mid_round_is_left_out(cluster: Cluster):
    out = cluster.tmp / "out"
    victim = cluster.procs["client2"]
    with cluster.logs_on_failure():
        start = time.monotonic()
        run = cluster.flwr_run(run_config(out, 1, 45.0))
        # The round has started for the victim once its SuperNode took the train message.
        cluster.wait_for("client2", r"Receiving: train\.split", 150, "flwr-run")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)  # reaped: its SuperExec and app see their parent gone
        killed_at = time.monotonic() - start
        assert group_empties(victim.pid, timeout=20), "the killed node left processes behind"
        log = cluster.finish(run, RUN_TIMEOUT)
        report_time(
            f"deployment run, 1 round, client killed at {killed_at:.1f} s",
            time.monotonic() - start,
        )

        assert victim.returncode == -signal.SIGKILL
        assert run.returncode == 0, log[-2000:]
        assert "Strategy execution finished" in log
        assert "round 1: 2/3 client updates aggregated" in log
        assert re.search(r"aggregate_train: Received 2 results and 1 failures", log)
        assert "Node Unavailable" in log  # the SuperLink's error reply for the dead node
        # named by its own id, not the SuperLink's (1), which sent the reply
        dead = re.search(
            r"round 1: client (\d+) failed: the SuperLink replied for it: Error: Node "
            r"Unavailable",
            log,
        )
        assert dead is not None and int(dead[1]) != 1, log[-3000:]
        result = history(out)
        assert set(result["train"]) == {"1"}
        server = result["server"]
        assert server["1"][TEST_ACC] > server["0"][TEST_ACC]
        for name in ("superlink", "client0", "client1", "helper0"):
            assert cluster.procs[name].poll() is None, f"{name} exited"
