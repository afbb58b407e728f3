"""How the run is going, for whoever started it: ``status.json`` in the output directory.

``flwr run`` returns once the run is submitted and ``flwr run --stream`` exits 0 even
when the ServerApp raised, so neither tells a failed run from a completed one. With run
config ``output-dir`` the ServerApp writes ``status.json`` there (next to
``history.json``): when it starts, after every round and when it ends, each time
replacing the whole file (written beside it, then renamed: a reader never sees half of
it)::

    {"state": "completed",          # "running", "completed" or "failed"
     "round": 4, "num-rounds": 4,   # last round trained (and aggregated or skipped)
     "error": null,                 # "failed": the exception, "RuntimeError: ..."
     "updated": "2025-01-31T12:00:00", "started": "...", "run-id": 123,
     "pid": 4242, "host": "superlink-1",
     "rounds": {"1": {"clients": [..], "completed": [..], "failed": [..],
                      "aggregated": true, "helper-of": {"<client>": <helper>},
                      "wall-s": 12.8}, ...}}

``rounds`` holds each round's sampled clients, those whose update came back complete,
those that did not, whether the round was aggregated (``min-completed-clients``) and
which helper served each client. A run resumed from a checkpoint keeps the records of
the rounds before it. A ServerApp process that was killed cannot say so: its file stays
``running`` with an ``updated`` time that no longer moves and a ``pid`` that is gone.
``flsplit status DIR`` prints one line from the file and exits 0 only for
``completed`` (:func:`describe`, :func:`exit_code`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.supercore import log

STATUS_FILE = "status.json"
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"

RoundHook = Callable[[int, ArrayRecord, Any], None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file beside it and
    :func:`os.replace`, so the file is always either the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=float))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_status(output_dir: str | Path) -> dict[str, Any] | None:
    """The status in ``output_dir`` (or at that path, if it names the file), ``None``
    if there is none."""
    path = Path(output_dir)
    if path.is_dir() or not path.name.endswith(".json"):
        path = path / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class RunStatus:
    """The ServerApp's ``status.json``; does nothing without an output directory.

    Writing never stops the run: an error writing the file is logged once as a warning.

    Parameters
    ----------
    output_dir : str or Path, optional
        Where ``status.json`` goes (run config ``output-dir``); ``None`` or ``""``: nowhere.
    run_id : int, optional
        The Flower run's id, to tell runs apart (``flwr ls`` shows the same id).
    """

    def __init__(self, output_dir: str | Path | None, run_id: int | None = None) -> None:
        self.path = Path(output_dir).resolve() / STATUS_FILE if output_dir else None
        self.data: dict[str, Any] = {
            "state": RUNNING,
            "round": 0,
            "num-rounds": None,
            "error": None,
            "started": _now(),
            "updated": None,
            "run-id": run_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "rounds": {},
        }
        self._warned = False
        self._earlier = self._earlier_rounds()  # before this run's first write replaces them
        if self.path is not None:
            log(INFO, "run status: %s", self.path)
        self.write()

    @classmethod
    def for_run(cls, context: Any, defaults: Mapping[str, Any] | None = None) -> RunStatus:
        """The status of the run ``context`` belongs to, in its ``output-dir`` (the run
        config's, else ``defaults``'), read before anything else so that even a run
        config the ServerApp refuses is reported as ``failed``."""
        config = dict(defaults or {})
        config.update(getattr(context, "run_config", None) or {})
        output_dir = config.get("output-dir") or None
        return cls(str(output_dir) if output_dir else None, getattr(context, "run_id", None))

    def started(self, done: int, num_rounds: int) -> None:
        """The run goes from round ``done + 1`` to ``num_rounds``: a resumed run keeps
        the round records of an earlier status file up to ``done``."""
        kept = {r: v for r, v in self._earlier.items() if int(r) <= done}
        self.data["rounds"] = {**kept, **self.data["rounds"]}
        self.data.update({"round": done, "num-rounds": num_rounds})
        self.write()

    def _earlier_rounds(self) -> dict[str, Any]:
        """The round records of the status file this run replaces (an earlier run's)."""
        if self.path is None:
            return {}
        try:
            rounds = json.loads(self.path.read_text()).get("rounds", {})
            return {str(r): v for r, v in rounds.items() if str(r).isdigit()}
        except (OSError, ValueError, AttributeError):
            return {}

    def round_ended(self, server_round: int, record: Mapping[str, Any] | None = None) -> None:
        """Round ``server_round`` is trained (aggregated, or skipped) with ``record``."""
        self.data["round"] = server_round
        if record is not None:
            self.data["rounds"][str(server_round)] = dict(record)
        self.write()

    def after_round(self, hook: RoundHook | None) -> RoundHook:
        """An ``on_round_end`` hook for :class:`~strategies.split.SplitStrategy` that
        runs ``hook`` (the checkpoint, say), then records the round from the strategy's
        ``round_records``."""

        def on_round_end(server_round: int, arrays: ArrayRecord, strategy: Any) -> None:
            if hook is not None:
                hook(server_round, arrays, strategy)
            record = getattr(strategy, "round_records", {}).get(server_round)
            wall = getattr(strategy, "round_times", {}).get(server_round)
            if record is not None and wall is not None:
                record = {**record, "wall-s": round(wall, 3)}
            self.round_ended(server_round, record)

        return on_round_end

    def completed(self) -> None:
        """The ServerApp returned."""
        self.data["state"] = COMPLETED
        self.write()

    def failed(self, error: BaseException) -> None:
        """The ServerApp raised ``error`` (or was interrupted)."""
        self.data["state"] = FAILED
        text = str(error)
        self.data["error"] = f"{type(error).__name__}: {text}" if text else type(error).__name__
        self.write()

    def write(self) -> None:
        """Replace ``status.json`` with the current state (nothing without a path)."""
        if self.path is None:
            return
        self.data["updated"] = _now()
        try:
            write_json_atomically(self.path, self.data)
        except (OSError, TypeError, ValueError) as err:
            if not self._warned:
                log(WARNING, "could not write the run status %s: %s", self.path, err)
                self._warned = True


def describe(status: Mapping[str, Any] | None) -> str:
    """One line about a status (from :func:`read_status`)."""
    if status is None:
        return "no status.json: the ServerApp never started with this output-dir"
    state = status.get("state", "?")
    rounds = f"round {status.get('round', '?')} of {status.get('num-rounds') or '?'}"
    where = f"run {status.get('run-id')}, updated {status.get('updated')}"
    if state == FAILED:
        return f"failed after {rounds} ({where}): {status.get('error')}"
    if state == RUNNING:
        return (
            f"running, {rounds} done ({where}; if that time no longer moves, check that "
            f"pid {status.get('pid')} on {status.get('host')} still runs)"
        )
    skipped = [r for r, rec in status.get("rounds", {}).items() if not rec.get("aggregated")]
    return f"{state}, {rounds} ({where})" + (
        f"; rounds not aggregated: {', '.join(sorted(skipped, key=int))}" if skipped else ""
    )


def exit_code(status: Mapping[str, Any] | None) -> int:
    """0 completed, 1 failed, 2 no status, 3 still running (or killed while running)."""
    if status is None:
        return 2
    return {COMPLETED: 0, FAILED: 1}.get(status.get("state", ""), 3)
