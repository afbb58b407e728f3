"""A helper SuperNode SIGKILLed mid-round and restarted, on Flower's deployment engine.

``python -m benchmarks.helper_restart --runs 10`` repeats, each time on a fresh
deployment (:class:`benchmarks.deployment.Deployment`: a ``flower-superlink``, 2 helper
and 4 client SuperNodes on loopback, the quickstart app on the offline digits, ``flwr run``
for 4 rounds):

1. once round 2 has reached helper ``helper1`` (its second "helper serving" log line) and
   a second more has passed, SIGKILL that SuperNode and everything it started (its
   SuperExec, its ClientApp serving the data plane) at once, as when its machine dies;
2. once round 3 has reached the other helper, start ``helper1`` again with the same
   command (it registers with a new node id);
3. wait for the run and read the ServerApp's ``status.json`` and ``history.json``.

A run passes (:func:`problems` is empty) when the status says ``completed`` after all
rounds, ``history.json`` holds every round, every round was aggregated, every client's
update was aggregated in the rounds without a kill, in the kill round exactly the clients
of the killed helper are missing, the next round serves all clients on the surviving
helper, and the restarted helper serves again in the round after its restart. Prints one
line per run (whether it completed all rounds, the updates aggregated per round, the
problems) and a summary; exits 0 only if every run passed. Logs of failed runs are kept
(``--keep`` keeps all).

Each run starts 7 Flower processes (and their SuperExecs and apps) and takes about three
minutes, a minute of it in the kill round: the SuperLink reports the dead helper only once
it has missed its heartbeats. Run it alone; on a shared machine ``--lock
/tmp/flsplit-heavy.lock`` holds that lock (``flock(2)``, as ``flock(1)`` does) for each run,
so other heavy jobs may go in between.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.deployment import Deployment, deployment_available
from flsplit.server.status import COMPLETED, read_status

HELPERS, CLIENTS = 2, 4
VICTIM, SURVIVOR = "helper1", "helper0"
SERVING = r"helper serving \d+ clients"  # the helper handler's line, once per round
RUN_TIMEOUT = 600.0  # seconds one `flwr run` may take


def run_config(
    output_dir: Path,
    rounds: int,
    clients: int = CLIENTS,
    helpers: int = HELPERS,
    round_timeout: float = 120.0,
    call_deadline: float = 30.0,
) -> str:
    """``--run-config`` of the quickstart for a deployment test: no federated evaluation
    (the server evaluates), ``status.json`` and ``history.json`` in ``output_dir``."""
    return (
        f"num-server-rounds={rounds} num-clients={clients} num-helpers={helpers} "
        f"round-timeout={round_timeout:.1f} call-deadline={call_deadline:.1f} "
        f"fraction-evaluate=0.0 output-dir='{output_dir}'"
    )


@dataclass
class Outcome:
    """What one run did."""

    run: int
    seconds: float = 0.0
    state: str = "?"
    rounds_done: int = 0
    num_rounds: int = 0
    #: round -> (complete updates aggregated, clients trained)
    aggregated: dict[int, tuple[int, int]] = field(default_factory=dict)
    victim: int | None = None  # the killed helper's node id
    survivor: int | None = None
    restarted: int | None = None  # its node id after the restart
    killed_in: int | None = None  # the round running when it was killed
    restarted_in: int | None = None  # ... when it was started again
    joined_in: int | None = None  # ... once it had its node id (for the record)
    status: dict[str, Any] | None = None
    history_rounds: list[int] = field(default_factory=list)
    error: str = ""
    workdir: str = ""

    def line(self) -> str:
        """One line: completed or not, updates aggregated per round, the problems."""
        per_round = ", ".join(f"{a}/{n}" for _, (a, n) in sorted(self.aggregated.items()))
        found = problems(self)
        verdict = "ok" if not found else "FAILED: " + "; ".join(found)
        return (
            f"run {self.run}: {self.state}, {self.rounds_done}/{self.num_rounds} rounds in "
            f"{self.seconds:.0f} s; updates aggregated per round: {per_round or '-'}; "
            f"{VICTIM} killed in round {self.killed_in}, restarted in round "
            f"{self.restarted_in}; {verdict}"
        )


def _round_running(output_dir: Path) -> int:
    """The round in progress according to ``status.json`` (its last round + 1)."""
    status = read_status(output_dir) or {}
    return int(status.get("round") or 0) + 1


def run_once(
    workdir: Path,
    run: int = 1,
    rounds: int = 4,
    kill_round: int = 2,
    restart_round: int = 3,
    say: Callable[[str], None] | None = None,
) -> Outcome:
    """One run of the scenario in ``workdir`` (see the module docstring); every process
    started is stopped before it returns."""
    if not 1 <= kill_round < restart_round <= rounds:
        raise ValueError("need 1 <= kill round < restart round <= rounds")
    say = say or (lambda _line: None)
    out = workdir / "out"
    outcome = Outcome(run=run, num_rounds=rounds, workdir=str(workdir))
    deployment = Deployment(workdir, say=say)
    started = time.monotonic()
    try:
        deployment.up(helpers=HELPERS, clients=CLIENTS)
        outcome.victim = deployment.node_id(VICTIM)
        outcome.survivor = deployment.node_id(SURVIVOR)
        flwr_run = deployment.flwr_run(run_config(out, rounds))
        # mid-round: the victim serves the kill round and its clients are training
        deployment.wait_for(VICTIM, SERVING, 300, "flwr-run", count=kill_round)
        time.sleep(1.0)
        outcome.killed_in = _round_running(out)
        deployment.kill(VICTIM)
        say(f"run {run}: {VICTIM} ({outcome.victim}) SIGKILLed in round {outcome.killed_in}")
        # the restart round has reached the surviving helper
        deployment.wait_for(SURVIVOR, SERVING, 400, "flwr-run", count=restart_round)
        outcome.restarted_in = _round_running(out)
        outcome.restarted = deployment.restart(VICTIM)
        outcome.joined_in = _round_running(out)
        say(f"run {run}: {VICTIM} restarted in round {outcome.restarted_in}, registered as "
            f"{outcome.restarted} in round {outcome.joined_in}")  # fmt: skip
        deployment.finish(flwr_run, RUN_TIMEOUT)
    except (AssertionError, RuntimeError, OSError) as err:
        outcome.error = f"{type(err).__name__}: {err}"
        (workdir / "report.txt").write_text(deployment.report())
    finally:
        outcome.seconds = time.monotonic() - started
        deployment.stop()
    _read_results(outcome, out)
    return outcome


def _read_results(outcome: Outcome, out: Path) -> None:
    status = read_status(out) if out.exists() else None
    outcome.status = status
    if status is not None:
        outcome.state = status.get("state", "?")
        outcome.rounds_done = int(status.get("round") or 0)
        outcome.aggregated = {
            int(r): (len(rec.get("completed", [])) if rec.get("aggregated") else 0,
                     len(rec.get("clients", [])))
            for r, rec in status.get("rounds", {}).items()
        }  # fmt: skip
    history = out / "history.json"
    if history.exists():
        with history.open() as file:
            outcome.history_rounds = sorted(int(r) for r in json.load(file).get("train", {}))


def problems(outcome: Outcome) -> list[str]:
    """What in ``outcome`` falls short of the scenario's expectations (empty: passed)."""
    found = [outcome.error] if outcome.error else []
    status = outcome.status
    if status is None:
        return [*found, "no status.json"]
    rounds = outcome.num_rounds
    if status.get("state") != COMPLETED or outcome.rounds_done != rounds:
        found.append(f"status {status.get('state')} after round {outcome.rounds_done}: "
                     f"{status.get('error')}")  # fmt: skip
    if outcome.history_rounds != list(range(1, rounds + 1)):
        found.append(f"history.json holds rounds {outcome.history_rounds}")
    records = {int(r): rec for r, rec in status.get("rounds", {}).items()}
    for rnd in range(1, rounds + 1):
        if rnd not in records:
            found.append(f"round {rnd}: no record")
            continue
        found += [f"round {rnd}: {p}" for p in _round_problems(outcome, rnd, records[rnd])]
    return found


def _round_problems(outcome: Outcome, rnd: int, record: dict[str, Any]) -> list[str]:
    found = [] if record.get("aggregated") else ["not aggregated"]
    clients, failed = record.get("clients", []), record.get("failed", [])
    completed = record.get("completed", [])
    helper_of = {int(c): h for c, h in record.get("helper-of", {}).items()}
    served_by = sorted(set(helper_of.values()))
    killed, restarted = outcome.killed_in or 0, outcome.restarted_in or 0
    if rnd == killed:
        lost = sorted(c for c, h in helper_of.items() if h == outcome.victim)
        if not lost or failed != lost:
            found.append(f"failed {failed}, but the killed helper served {lost}")
        if sorted(completed) != sorted(set(clients) - set(lost)):
            found.append(f"complete {completed}: a client of the live helper was left out")
    elif failed or len(completed) != CLIENTS:
        found.append(f"{len(completed)}/{CLIENTS} complete, failed {failed}")
    if killed < rnd <= restarted and served_by != [outcome.survivor]:
        found.append(f"served by {served_by}, not only the surviving helper")
    if rnd > killed and outcome.victim in served_by:
        found.append(f"the killed helper {outcome.victim} was assigned clients")
    if rnd == restarted + 1 and outcome.restarted not in served_by:
        found.append(f"the restarted helper {outcome.restarted} served nobody ({served_by})")
    return found


@contextlib.contextmanager
def _locked(path: str | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (nothing without one)."""
    if not path:
        yield
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.helper_restart",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--runs", type=int, default=10, help="runs in a row (default 10)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kill-round", type=int, default=2)
    parser.add_argument("--restart-round", type=int, default=3)
    parser.add_argument("--workdir", help="where runs keep their logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the logs of passing runs")
    parser.add_argument("--out", help="write every run's outcome as JSON here")
    parser.add_argument("--lock", help="hold an exclusive flock on this file during each run")
    args = parser.parse_args(argv)
    if not deployment_available():
        print("Flower's deployment executables are not installed next to this Python",
              file=sys.stderr)  # fmt: skip
        return 2
    base = Path(args.workdir or tempfile.mkdtemp(prefix="flsplit-helper-restart-")).resolve()
    outcomes = []
    for run in range(1, args.runs + 1):
        workdir = base / f"run-{run}"
        workdir.mkdir(parents=True, exist_ok=False)
        with _locked(args.lock):
            outcome = run_once(workdir, run, args.rounds, args.kill_round, args.restart_round,
                               say=lambda line: print(f"  {line}", flush=True))  # fmt: skip
        outcomes.append(outcome)
        print(outcome.line(), flush=True)
        if not problems(outcome) and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if args.out:
            Path(args.out).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    passed = sum(not problems(o) for o in outcomes)
    print(f"{passed}/{len(outcomes)} runs completed all {args.rounds} rounds with every "
          f"update of a live client aggregated; logs in {base}")  # fmt: skip
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
