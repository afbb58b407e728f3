"""Ordering the work of one helper, given the clients it serves.

Per helper this is a one-machine problem with two operations per job: the forward is
released when stage 1 ends, the backward ``delay`` (stage 3) after the forward ends, and
each job has a ``tail`` (stage 5) after its backward. We use list scheduling with several
priority rules (Schrage-like "longest remaining path first", first-come-first-served,
backward-first); the best order is kept.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from flsplit.plan.evaluator import IndexTask, StageTable, helper_finish

RULES: tuple[str, ...] = ("tail", "bwd-first", "fcfs")


def list_schedule(
    table: StageTable, helper: int, clients: Sequence[int], rule: str = "tail"
) -> list[IndexTask]:
    """Build a non-delay order for ``clients`` on ``helper`` with a priority ``rule``.

    Whenever the helper is free it starts, among the tasks whose input has arrived, the
    one that ``rule`` prefers (or waits for the next arrival):

    - ``"tail"``: longest remaining path to the client's finish (ties: earliest arrival);
    - ``"bwd-first"``: backward tasks first, then ``"tail"``;
    - ``"fcfs"``: earliest arrival (first come, first served; forward before backward on
      ties).
    """
    release, fwd, delay = table.release[helper], table.fwd[helper], table.delay[helper]
    bwd, tail = table.bwd[helper], table.tail[helper]

    def key(client: int, is_bwd: bool, ready: float) -> tuple[float, float, float]:
        if rule == "fcfs":
            return (ready, float(is_bwd), 0.0)
        remaining = bwd[client] + tail[client]
        if not is_bwd:
            remaining += fwd[client] + delay[client]
        group = 0.0 if (rule != "bwd-first" or is_bwd) else 1.0
        return (group, -remaining, ready)

    pending = [(release[c], c, False) for c in clients]
    heapq.heapify(pending)
    ready_heap: list[tuple[tuple[float, float, float], int, bool, float]] = []
    order: list[IndexTask] = []
    now = 0.0
    while pending or ready_heap:
        if not ready_heap and pending and pending[0][0] > now:
            now = pending[0][0]
        while pending and pending[0][0] <= now:
            ready, client, is_bwd = heapq.heappop(pending)
            heapq.heappush(ready_heap, (key(client, is_bwd, ready), client, is_bwd, ready))
        _, client, is_bwd, ready = heapq.heappop(ready_heap)
        start = now if now > ready else ready
        if is_bwd:
            now = start + bwd[client]
        else:
            now = start + fwd[client]
            heapq.heappush(pending, (now + delay[client], client, True))
        order.append((client, is_bwd))
    return order


def best_list_schedule(
    table: StageTable, helper: int, clients: Sequence[int], rules: Sequence[str] = RULES
) -> tuple[float, list[IndexTask]]:
    """Return ``(finish, order)`` of the best order over the given priority ``rules``."""
    best: tuple[float, list[IndexTask]] | None = None
    for rule in rules:
        order = list_schedule(table, helper, clients, rule)
        finish = helper_finish(table, helper, order)
        if best is None or finish < best[0]:
            best = (finish, order)
    if best is None:
        return 0.0, []
    return best
