"""Processes this program started, and what they started, found and stopped by pid.

Flower's executables start helpers of their own: a SuperLink starts ``flower-superexec``
in a session of its own (``start_new_session``), which starts ``flwr-serverapp`` (or
``flwr-simulation``); a SuperNode starts a SuperExec and ``flwr-clientapp`` processes.
Killing a parent does not take them along: a SIGKILLed SuperLink leaves its ServerApp
running in the SuperExec's session, reparented to init. So whoever started them keeps
their pids (with each one's start time, so a recycled pid is never signalled) and stops
exactly those, never anything found by name.

Linux ``/proc`` only: elsewhere :func:`process_table` is empty and callers fall back to
what they know (their own children, process groups).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

#: pid -> (parent pid, session id, start time in clock ticks since boot)
ProcessTable = Mapping[int, tuple[int, int, int]]


def process_table() -> dict[int, tuple[int, int, int]]:
    """``pid -> (parent pid, session id, start time)`` of every process (Linux /proc;
    empty elsewhere)."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "
            # fields: state ppid pgrp session tty_nr tpgid flags ... starttime is the 20th
            table[int(entry)] = (int(fields[1]), int(fields[3]), int(fields[19]))
    return table


def family(root: int, table: ProcessTable) -> dict[int, int]:
    """``root`` and what it spawned: its descendants and every process in a session one
    of them leads (a child that started its own session, and what was left in it after
    its parent exited). ``pid -> start time``."""
    members = {root}
    grown = True
    while grown:
        grown = False
        for pid, (ppid, session, _) in table.items():
            if pid not in members and (ppid in members or session in members):
                members.add(pid)
                grown = True
    return {pid: table[pid][2] for pid in members if pid in table}


def in_sessions(leaders: Iterable[int], table: ProcessTable) -> dict[int, int]:
    """Every process in a session led by one of ``leaders`` (pids), even if the leader
    and the process's parent are gone. ``pid -> start time``."""
    sessions = set(leaders)
    return {pid: started for pid, (_, session, started) in table.items() if session in sessions}


def signal_all(pids: Mapping[int, int], signum: int) -> None:
    """Send ``signum`` to each of ``pids`` still running with the start time it had."""
    table = process_table()
    for pid, started in pids.items():
        if table and table.get(pid, (0, 0, -1))[2] != started:
            continue  # gone (or the pid is another process's now)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def still_running(pids: Mapping[int, int]) -> dict[int, int]:
    """Those of ``pids`` still running with the start time they had (zombies count as
    gone: they hold nothing but a table entry until their parent reaps them)."""
    table = process_table()
    return {
        pid: s
        for pid, s in pids.items()
        if table.get(pid, (0, 0, -1))[2] == s and not _zombie(pid)
    }


def wait_gone(pids: Mapping[int, int], timeout: float) -> dict[int, int]:
    """Wait up to ``timeout`` seconds for ``pids`` to exit; return those still running."""
    deadline = time.monotonic() + timeout
    left = still_running(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = still_running(left)
    return left


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")
