"""The judge of a multi-client chain plan: feasibility and the round's makespan.

Every client's micro-batches pass its stages in route order: the client's own compute
(head and tail, one device), the link to its first helper, that helper, the next link,
... the last helper and the link back (a one-helper chain has one link carrying both
cuts). Stage times are the single-client model's (``placement_stages``, affine in the
micro-batch size). The client and its links serve that client's micro-batches one at a
time, in order; a helper serves its tasks (one per client and micro-batch it holds
layers for) one at a time in the plan's order, without preemption. An operation starts
when its micro-batch has left the previous stage and its resource is free; the round's
makespan is the latest end of any client's last stage. With one client this is the
single-client pipeline latency ``sum_s t_s + (M - 1) max_s t_s`` (a flow shop of
identical jobs). :func:`evaluate_chain` is the single judge of every chain planner.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from flsplit.plan.multihop.chain_problem import ChainPlan, ChainProblem, ChainRoute, ChainTask
from flsplit.plan.multihop.evaluation import placement_stages
from flsplit.plan.multihop.problem import MultihopError

#: Resource of a dedicated stage (the client's compute and its links).
OWN = 0


@dataclass
class ClientStages:
    """A client's stage sequence at its micro-batch size.

    ``times[s]`` is stage ``s``'s time per micro-batch (ms), ``resources[s]`` the helper
    index running it (``OWN`` = the client or one of its links), ``micro_batches`` = ``M``.
    ``lead_ms`` and ``trail_ms``: the client's serial head (``serial_head``), its forward
    before the first micro-batch and its backward after the last (a third and two thirds
    of its batch time, a backward costing about two forwards).
    """

    times: list[float]
    resources: list[int]
    micro_batches: int
    memory: dict[str, float]
    lead_ms: float = 0.0
    trail_ms: float = 0.0


def client_stages(problem: ChainProblem, k: int, route: ChainRoute) -> ClientStages:
    """Stages of client ``k`` on ``route``; raises :class:`MultihopError` when the route
    is malformed, uses a missing link or exceeds the client's or one helper's memory."""
    p = problem.clients[k]
    b = int(route.micro_batch)
    if not 1 <= b <= p.batch_size:
        raise MultihopError("placement", f"client {p.node_ids[0]!r}: micro-batch {b} not in "
                            f"1 .. {p.batch_size}")
    stages, memory = placement_stages(p, list(route.helpers), list(route.cuts))
    head = sum(s.a for s in stages if s.serial)
    stages = [s for s in stages if not s.serial]
    n = len(route.helpers)
    client, helpers, links = stages[0], stages[1:n + 1], stages[n + 1:]
    per = 2 if p.duplex else 1  # a duplex link is two stages, out and back
    seq = [(client, OWN), *((s, OWN) for s in links[:per])]
    for i, v in enumerate(route.helpers):
        seq.append((helpers[i], v))
        if n >= 2:
            seq.extend((s, OWN) for s in links[per * (i + 1):per * (i + 2)])
    return ClientStages([s.time(b) for s, _ in seq], [r for _, r in seq],
                        math.ceil(p.batch_size / b), memory, head / 3, 2 * head / 3)


def check_memory(problem: ChainProblem, stages: Sequence[ClientStages]) -> None:
    """Raise :class:`MultihopError` if a helper holds more than its memory over all the
    clients it holds layers of."""
    use: dict[str, float] = {}
    for cs in stages:
        for node, mib in list(cs.memory.items())[1:]:
            use[node] = use.get(node, 0.0) + mib
    for v, hid in enumerate(problem.helper_ids):
        if use.get(hid, 0.0) > problem.helper_memory_mib[v] + 1e-9:
            raise MultihopError("placement", f"helper {hid!r} needs {use[hid]:.1f} MiB over "
                                f"its clients, holds {problem.helper_memory_mib[v]:g} MiB")


def all_stages(problem: ChainProblem, routes: Sequence[ChainRoute]) -> list[ClientStages]:
    """Stages of every client, with the shared memory checked."""
    if len(routes) != problem.num_clients:
        raise MultihopError("placement", f"{len(routes)} routes for "
                            f"{problem.num_clients} clients")
    stages = [client_stages(problem, k, r) for k, r in enumerate(routes)]
    check_memory(problem, stages)
    return stages


def simulate(stages: Sequence[ClientStages], orders: dict[int, list[ChainTask]]
             ) -> tuple[float, list[float]]:
    """Makespan and each client's finish for fixed helper task orders.

    Raises
    ------
    MultihopError
        When an order misses or repeats a task, or the orders deadlock.
    """
    # position of helper v in each client's stage list
    stage_of: list[dict[int, int]] = [
        {r: s for s, r in enumerate(cs.resources) if r != OWN} for cs in stages]
    expected = {}
    for k, cs in enumerate(stages):
        for v in stage_of[k]:
            expected[v] = expected.get(v, 0) + cs.micro_batches
    for v, count in expected.items():
        tasks = orders.get(v, [])
        if len(tasks) != count or len(set(tasks)) != count:
            raise MultihopError("orders", f"helper {v}: order has {len(tasks)} tasks, "
                                f"expected {count} distinct")
    for v, tasks in orders.items():
        if tasks and v not in expected:
            raise MultihopError("orders", f"helper {v} serves no client")
        last: dict[int, int] = {}
        for k, m in tasks:
            if not 0 <= k < len(stages) or v not in stage_of[k] or \
                    not 0 <= m < stages[k].micro_batches:
                raise MultihopError("orders", f"helper {v}: task {(k, m)} is not its")
            if m != last.get(k, -1) + 1:
                raise MultihopError("orders", f"helper {v}: client {k}'s micro-batches "
                                    "out of order")
            last[k] = m
    done = [[0] * len(cs.times) for cs in stages]  # micro-batches finished per stage
    end = [[0.0] * len(cs.times) for cs in stages]  # end of the last finished one
    pos = dict.fromkeys(orders, 0)
    free = dict.fromkeys(orders, 0.0)
    stack = [(k, 0) for k in range(len(stages))] + [
        (tasks[0][0], stage_of[tasks[0][0]][v]) for v, tasks in orders.items() if tasks]
    left = sum(len(cs.times) * cs.micro_batches for cs in stages)
    # arrival[k][s]: end times at stage s - 1 of micro-batches not yet run at stage s
    arrivals: list[list[list[float]]] = [[[] for _ in cs.times] for cs in stages]
    while stack:
        k, s = stack.pop()
        cs = stages[k]
        m = done[k][s]
        if m >= cs.micro_batches:
            continue
        if s > 0 and done[k][s - 1] <= m:
            continue
        v = cs.resources[s]
        ready = arrivals[k][s][m] if s > 0 else cs.lead_ms
        if v != OWN:
            tasks = orders[v]
            if pos[v] >= len(tasks) or tasks[pos[v]] != (k, m):
                continue
            start = max(ready, free[v])
            free[v] = start + cs.times[s]
            pos[v] += 1
            if pos[v] < len(tasks):
                nk, _ = tasks[pos[v]]
                stack.append((nk, stage_of[nk][v]))
            finish = free[v]
        else:
            start = max(ready, end[k][s]) if m > 0 else ready
            finish = start + cs.times[s]
        end[k][s] = finish
        done[k][s] = m + 1
        left -= 1
        if s + 1 < len(cs.times):
            arrivals[k][s + 1].append(finish)
            stack.append((k, s + 1))
        stack.append((k, s))
    if left:
        raise MultihopError("orders", "the helpers' task orders deadlock")
    finish = [end[k][-1] + cs.trail_ms for k, cs in enumerate(stages)]
    return max(finish), finish


def list_schedule(stages: Sequence[ClientStages], priority: Sequence[float] | None = None,
                  remaining: bool = False, weight: Sequence[float] | None = None
                  ) -> tuple[dict[int, list[ChainTask]], list[float]]:
    """Helper task orders by list scheduling: the operation that can start earliest runs
    next (ties: the client with the larger ``priority``, default its total work; with
    ``remaining``, the client with the most time still ahead of it, ``(M - m) x`` its
    largest stage from here on plus its later stages, for micro-batch ``m``, times the
    client's ``weight``, default 1).

    Returns the orders and each client's finish in the schedule built, which
    :func:`simulate` reproduces for those orders (both start every operation as early as its
    micro-batch and resource allow).
    """
    k_count = len(stages)
    if priority is None:
        priority = [sum(cs.times) * cs.micro_batches for cs in stages]
    # ahead[k][s]: (largest stage time from s on, sum of the stage times after s)
    ahead = [[(max(cs.times[s:]), sum(cs.times[s + 1:])) for s in range(len(cs.times))]
             for cs in stages]

    def rank(k: int, s: int, m: int) -> float:
        if not remaining:
            return -priority[k]
        top, rest = ahead[k][s]
        scale = 1.0 if weight is None else weight[k]
        return -((stages[k].micro_batches - m) * top + rest) * scale
    done = [[0] * len(cs.times) for cs in stages]  # micro-batches finished per stage
    end = [[0.0] * len(cs.times) for cs in stages]  # end of the last finished one
    arrivals: list[list[list[float]]] = [[[] for _ in cs.times] for cs in stages]
    free: dict[int, float] = {}
    orders: dict[int, list[ChainTask]] = {}
    heap: list[tuple[float, float, int, int]] = []

    def arrive(k: int, s: int, m: int, t: float) -> None:
        # micro-batch m reaches stage s at t: the client's own stages (no contention,
        # micro-batches in order) run at once, up to the next helper stage
        cs = stages[k]
        count = len(cs.times)
        while s < count and cs.resources[s] == OWN:
            t = (t if m == 0 or t > end[k][s] else end[k][s]) + cs.times[s]
            end[k][s] = t
            done[k][s] = m + 1
            s += 1
        if s < count:
            arrivals[k][s].append(t)
            if done[k][s] == m:  # the helper stage waits for this micro-batch
                heapq.heappush(heap, (t, rank(k, s, m), k, s))

    for k, cs in enumerate(stages):
        for m in range(cs.micro_batches):
            arrive(k, 0, m, cs.lead_ms)
    while heap:
        est, pri, k, s = heapq.heappop(heap)
        cs = stages[k]
        m = done[k][s]
        v = cs.resources[s]
        ready = arrivals[k][s][m]
        start = free.get(v, 0.0)
        if ready > start:
            start = ready
        if start > est + 1e-12:  # the helper got busy meanwhile: wait in line
            heapq.heappush(heap, (start, pri, k, s))
            continue
        finish = start + cs.times[s]
        free[v] = finish
        orders.setdefault(v, []).append((k, m))
        end[k][s] = finish
        done[k][s] = m + 1
        if s + 1 < len(cs.times):
            arrive(k, s + 1, m, finish)
        if len(arrivals[k][s]) > m + 1:  # the next micro-batch is already waiting
            heapq.heappush(heap, (arrivals[k][s][m + 1], rank(k, s, m + 1), k, s))
    return orders, [end[k][-1] + stages[k].trail_ms for k in range(k_count)]


def evaluate_chain(problem: ChainProblem, plan: ChainPlan) -> float:
    """The round's makespan (ms) of ``plan``; the single judge of chain plans.

    Raises
    ------
    MultihopError
        When a route is malformed or uses a missing link, a node cannot run its layers,
        a client's or a helper's memory (summed over all clients it holds layers of) is
        exceeded, or the task orders are incomplete or deadlock.
    """
    stages = all_stages(problem, plan.routes)
    makespan, _ = simulate(stages, plan.orders)
    return makespan


def judged(problem: ChainProblem, plan: ChainPlan) -> ChainPlan:
    """Set ``plan.makespan`` from :func:`evaluate_chain` and return the plan."""
    plan.makespan = evaluate_chain(problem, plan)
    return plan
