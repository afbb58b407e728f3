"""Predict a whole training round from a one-batch plan.

A plan orders one batch per client. In a round every client runs ``batches[k]`` batches
one after the other, and a helper runs, among its ready tasks, the one that comes first in
its planned order (repeated every batch), never idling while a task is ready: exactly what
flsplit's helper worker does. This module simulates that to predict the round's makespan
and timeline from the instance's stage times.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from flsplit.plan.instance import Instance
from flsplit.plan.plan import Plan


@dataclass(frozen=True)
class RoundTask:
    """One helper task of the predicted round (times in ms from the round start)."""

    helper: str
    client: str
    kind: str
    batch: int
    start: float
    end: float


@dataclass
class RoundPrediction:
    """Predicted round makespan, per-client finish times and helper timeline."""

    makespan: float
    finish: dict[str, float]
    tasks: list[RoundTask]


def predict_round(
    instance: Instance,
    plan: Plan,
    batches: Sequence[int],
    release: Sequence[float] | None = None,
) -> RoundPrediction:
    """Simulate ``batches[k]`` batches of every client under ``plan``'s priorities.

    Parameters
    ----------
    instance : Instance
        Stage times of one batch.
    plan : Plan
        Assignment and per-helper task order (the priority of every batch).
    batches : sequence of int
        Batches each client runs in the round, in ``instance.client_ids`` order.
    release : sequence of float, optional
        When each client starts its first batch (ms after the round starts; default 0).

    Returns
    -------
    RoundPrediction
        Makespan (ms), each client's finish time and every helper task.
    """
    if len(batches) != len(instance.client_ids):
        raise ValueError(
            f"batches has {len(batches)} entries for {len(instance.client_ids)} clients"
        )
    release = list(release) if release is not None else [0.0] * len(batches)
    if len(release) != len(batches):
        raise ValueError(f"release has {len(release)} entries for {len(batches)} clients")
    k_index = {c: i for i, c in enumerate(instance.client_ids)}
    h_index = {h: j for j, h in enumerate(instance.helper_ids)}
    helper_of = {c: plan.assignment[c] for c in instance.client_ids}
    rank = {
        (helper, client, kind): position
        for helper, tasks in plan.order.items()
        for position, (client, kind) in enumerate(tasks)
    }

    def stage(name: str, client: str) -> float:
        return float(getattr(instance, name)[k_index[client], h_index[helper_of[client]]])

    # events: (time, seq, client, kind) - a task becomes ready on its helper
    events: list[tuple[float, int, str, str]] = []
    seq = 0
    done = dict.fromkeys(instance.client_ids, 0)
    finish: dict[str, float] = {}
    for client, count, start in zip(instance.client_ids, batches, release, strict=True):
        if count > 0:
            events.append((start + stage("head_fwd_up", client), seq, client, "fwd"))
            seq += 1
        else:
            finish[client] = start
    heapq.heapify(events)
    ready: dict[str, list[tuple[int, int, str, str]]] = {h: [] for h in instance.helper_ids}
    free_at = dict.fromkeys(instance.helper_ids, 0.0)
    busy = dict.fromkeys(instance.helper_ids, False)
    tasks: list[RoundTask] = []
    # helper completions are events too: (time, seq, helper, "") marks the helper free
    while events:
        now = events[0][0]
        while events and events[0][0] <= now + 1e-9:  # everything that happens at `now`
            _, _, who, kind = heapq.heappop(events)
            if kind == "":  # a helper finished its task
                busy[who] = False
            else:
                helper = helper_of[who]
                heapq.heappush(
                    ready[helper], (rank.get((helper, who, kind), len(rank)), seq, who, kind)
                )
                seq += 1
        for helper, queue in ready.items():
            if busy[helper] or not queue:
                continue
            _, _, client, task_kind = heapq.heappop(queue)
            start = max(now, free_at[helper])
            duration = stage("body_fwd" if task_kind == "fwd" else "body_bwd", client)
            end = start + duration
            free_at[helper], busy[helper] = end, True
            tasks.append(RoundTask(helper, client, task_kind, done[client], start, end))
            heapq.heappush(events, (end, seq, helper, ""))
            seq += 1
            if task_kind == "fwd":
                heapq.heappush(events, (end + stage("tail_fwd_bwd", client), seq, client, "bwd"))
            else:
                batch_end = end + stage("down_head_bwd", client)
                done[client] += 1
                index = k_index[client]
                if done[client] < batches[index]:
                    next_ready = batch_end + stage("head_fwd_up", client)
                    heapq.heappush(events, (next_ready, seq, client, "fwd"))
                else:
                    finish[client] = batch_end
            seq += 1
    return RoundPrediction(max(finish.values(), default=0.0), finish, tasks)
