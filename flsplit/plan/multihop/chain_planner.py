"""The multi-client chain planner: routes, layer ranges, micro-batches, helper orders.

Heuristic, time-limited (default 2 s); every candidate is judged by
:func:`~flsplit.plan.multihop.chain_evaluation.evaluate_chain`, helper task orders come
from list scheduling (:func:`~flsplit.plan.multihop.chain_evaluation.list_schedule`).

1. **Round-robin chains** (the runtime's rule, as helper sets): for each chain length
   ``n``, client ``i`` gets helpers ``i, i + 1, ... (mod H)`` in route order, the body
   cut into ``n`` ranges of about equal memory, its best standalone micro-batch size;
   the best feasible length is kept.
2. **Best one-hop plan**: clients in decreasing order of work, each placed on one helper
   (best ``(helper, c1, c2, b)`` with the helpers' remaining memory, helper times scaled
   by ``1 +`` the number of clients already on the helper, as if time-shared), then
   improved by the local search below restricted to one hop.
3. **Column generation** (:func:`column_plan`, module ``chain_columns``):
   routes (up to three hops) chosen jointly so that the largest helper work is least
   within the helpers' memory, each client with the fewest micro-batches that keep its
   own pipeline well within the best makespan so far (every micro-batch costs each
   helper of its route an overhead), started from the routes of steps 2 and the
   load-balanced splits; helper orders by list scheduling, static or by the time each
   client still has ahead of it (the better).
4. **Chains**: the local search from the best plan so far, chains allowed. A move takes
   the client that finishes last (or a random one) and tries: re-placing it, one hop or
   a chain (exact single-client placement on its problem with the other clients'
   helpers scaled by their load and the remaining memory), another micro-batch count,
   one layer moved across one of its cuts, one hop moved to another helper, a swap of
   helpers with another client. A move is kept when the judged makespan falls, so a
   client gets a chain only where that shortens the round (or where no single helper
   can hold its body); at a local optimum two random clients are perturbed and the
   descent goes on until the time limit, keeping the best plan. Moves are judged with
   the time-ahead list rule and the current plan's client weights.
5. **Re-weighted schedules** (:func:`reweighted_schedule`): at each local optimum of
   step 4 and for the final plan (the last ``FINAL_RESCHEDULE`` of the time), the
   helper orders are list-scheduled repeatedly with client weights that grow for the
   clients that finished last.

The plan returned is the best judged of all of them, so it is never worse than
round-robin chains or the best one-hop plan found.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import time
from collections.abc import Sequence

import numpy as np

from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.multihop.chain_bound import option_thresholds
from flsplit.plan.multihop.chain_columns import column_routes
from flsplit.plan.multihop.chain_evaluation import (
    ClientStages,
    check_memory,
    client_stages,
    evaluate_chain,
    list_schedule,
    simulate,
)
from flsplit.plan.multihop.chain_problem import ChainPlan, ChainProblem, ChainRoute, ChainTask
from flsplit.plan.multihop.evaluation import pipeline_latency, placement_stages
from flsplit.plan.multihop.micro_batch import best_micro_batch
from flsplit.plan.multihop.placement import place, single_hop, stage_tables
from flsplit.plan.multihop.problem import MultihopError, MultihopProblem, Stage

#: Planner seconds unless told otherwise.
DEFAULT_CHAIN_TIME_LIMIT = 2.0


class _StageCache:
    """Memoised :func:`client_stages` (``None`` = infeasible) for one planner run."""

    def __init__(self, problem: ChainProblem) -> None:
        self.problem = problem
        self.memo: dict[tuple[int, ChainRoute], ClientStages | None] = {}

    def get(self, k: int, route: ChainRoute) -> ClientStages | None:
        key = (k, route)
        if key not in self.memo:
            try:
                self.memo[key] = client_stages(self.problem, k, route)
            except MultihopError:
                self.memo[key] = None
        return self.memo[key]

    def all(self, routes: Sequence[ChainRoute]) -> list[ClientStages] | None:
        stages = [self.get(k, r) for k, r in enumerate(routes)]
        if any(cs is None for cs in stages):
            return None
        try:
            check_memory(self.problem, stages)  # type: ignore[arg-type]
        except MultihopError:
            return None
        return stages  # type: ignore[return-value]


def judge_routes(problem: ChainProblem, routes: Sequence[ChainRoute], method: str = "",
                 cache: _StageCache | None = None, final: bool = True,
                 remaining: bool = False, weight: Sequence[float] | None = None
                 ) -> ChainPlan | None:
    """A plan of ``routes`` with list-scheduled helper orders; ``None`` when infeasible.

    ``final``: judge it by :func:`evaluate_chain` (else the list schedule's own
    makespan, which the judge reproduces, is kept while searching). ``remaining`` and
    ``weight``: the list schedule's priority rule (:func:`list_schedule`); the weights
    are kept in ``info["weight"]``.
    """
    stages = (cache or _StageCache(problem)).all(routes)
    if stages is None:
        return None
    return _scheduled(problem, stages, routes, method, final, remaining, weight)


def _scheduled(problem: ChainProblem, stages: Sequence[ClientStages],
               routes: Sequence[ChainRoute], method: str, final: bool, remaining: bool,
               weight: Sequence[float] | None) -> ChainPlan:
    orders, finish = list_schedule(stages, remaining=remaining, weight=weight)
    plan = ChainPlan(list(routes), orders, makespan=max(finish), method=method)
    # the local search's tie-break on equal makespans: the clients' finishes squared
    plan.info["spread"] = float(sum(f * f for f in finish))
    plan.info["finish"] = finish
    if remaining:
        plan.info["weight"] = None if weight is None else list(weight)
    if final:
        plan.makespan = evaluate_chain(problem, plan)
    return plan


#: The local search's list rule: the time ahead of each client (with its weight); the
#: clients' work, or the rule of the plan the search started from, were worse.
SEARCH_REMAINING = True
#: Re-weighted schedules at each local optimum of the local search.
SEARCH_RESCHEDULE = 10
#: Share of the time limit for re-weighting the final plan's schedule.
FINAL_RESCHEDULE = 0.08

#: Rounds of :func:`reschedule` without a better schedule before it stops.
RESCHEDULE_PATIENCE = 12


def reweighted_schedule(stages: Sequence[ClientStages], deadline: float,
                        rng: random.Random, rounds: int = 60,
                        weight: Sequence[float] | None = None
                        ) -> tuple[dict[int, list[ChainTask]], list[float], list[float]]:
    """The best of repeated list schedules (:func:`list_schedule` by the time each client
    still has ahead of it) with re-weighted client priorities.

    After every schedule a client's weight (start: ``weight``, default 1) is multiplied
    by ``(its finish / the makespan)^2`` and a random factor in ``[1, 1.1)``, so the
    clients that finished early yield the helpers to the ones that finished last; after
    ``RESCHEDULE_PATIENCE`` schedules without gain the weights restart from the best
    ones times random factors ``exp(N(0, 0.3))``. Up to ``rounds`` schedules, until
    ``deadline`` (``time.perf_counter``; the first always runs). Returns the orders,
    the clients' finishes (least makespan, then least sum of the finishes squared) and
    their weights.
    """
    k_count = len(stages)
    weight = list(weight or [1.0] * k_count)
    best: tuple[float, float, dict[int, list[ChainTask]], list[float], list[float]] | None
    best = None
    stale = 0
    for _ in range(rounds):
        if best is not None and time.perf_counter() >= deadline:
            break
        if stale >= RESCHEDULE_PATIENCE:  # restart near the best weights
            weight = [w * math.exp(rng.gauss(0.0, 0.3)) for w in best[4]]  # type: ignore[index]
            stale = 0
        orders, finish = list_schedule(stages, remaining=True, weight=weight)
        top = max(finish)
        key = (top, sum(f * f for f in finish))
        if best is None or key[0] < best[0] - 1e-9 or (
                key[0] <= best[0] + 1e-9 and key[1] < best[1] * (1 - 1e-9)):
            best, stale = (*key, orders, finish, list(weight)), 0
        else:
            stale += 1
        top = max(top, 1e-9)
        weight = [w * (f / top) ** 2 * (1.0 + 0.1 * rng.random())
                  for w, f in zip(weight, finish, strict=True)]
        norm = max(weight)
        weight = [max(w / norm, 1e-6) for w in weight]
    assert best is not None
    return best[2], best[3], best[4]


def reschedule(problem: ChainProblem, plan: ChainPlan, deadline: float,
               rng: random.Random, cache: _StageCache | None = None,
               rounds: int = 60) -> ChainPlan:
    """``plan`` with the helper orders of :func:`reweighted_schedule` (from the plan's
    weights) if they are better (lower makespan, or the same and lower finishes
    squared), else ``plan`` itself; judged as the list schedules are (the judge
    reproduces them)."""
    stages = (cache or _StageCache(problem)).all(plan.routes)
    if stages is None:
        return plan
    orders, finish, weight = reweighted_schedule(stages, deadline, rng, rounds,
                                                 plan.info.get("weight"))
    cand = ChainPlan(list(plan.routes), orders, makespan=max(finish), method=plan.method)
    cand.info.update(spread=float(sum(f * f for f in finish)), finish=finish, weight=weight)
    return cand if _better(cand, plan) else plan


def _equal_memory_cuts(p: MultihopProblem, n: int) -> tuple[int, ...] | None:
    start, stop = p.min_head, p.num_layers - p.min_tail
    if stop - start < n:
        return None
    cum = np.concatenate([[0.0], np.cumsum(p.layer_memory_mib[start:stop])])
    cuts = [start]
    for i in range(1, n):
        target = cum[-1] * i / n
        c = int(np.searchsorted(cum, target)) + start
        c = min(max(c, cuts[-1] + 1), stop - (n - i))
        cuts.append(c)
    cuts.append(stop)
    return tuple(cuts)


def round_robin(problem: ChainProblem) -> ChainPlan | None:
    """Best feasible round-robin chains over the chain lengths (see the module doc)."""
    h = problem.num_helpers
    best = None
    for n in range(1, h + 1):
        routes = []
        for k, p in enumerate(problem.clients):
            helpers = tuple(sorted({(k + j) % h + 1 for j in range(n)}))
            cuts = _equal_memory_cuts(p, n)
            if cuts is None:
                break
            try:
                stages, _ = placement_stages(p, list(helpers), list(cuts))
            except MultihopError:
                break
            b, _ = best_micro_batch(stages, p.batch_size)
            routes.append(ChainRoute(helpers, cuts, b))
        else:
            plan = judge_routes(problem, routes, "round-robin")
            if plan is not None and (best is None or plan.makespan < best.makespan):
                best = plan
    if best is not None:
        best.info["chain_length"] = len(best.routes[0].helpers)
    return best


def _shaped(p: MultihopProblem, factor: np.ndarray, memory: np.ndarray) -> MultihopProblem:
    """``p`` with helper times scaled by ``factor`` and helper memory ``memory``."""
    q = copy.copy(p)
    q.sample_ms = p.sample_ms.copy()
    q.sample_ms[1:] *= factor[:, None]
    q.overhead_ms = p.overhead_ms.copy()
    q.overhead_ms[1:] *= factor
    assert p.call_ms is not None  # set in __post_init__
    q.call_ms = p.call_ms.copy()
    q.call_ms[1:] *= factor[:, None]
    q.memory_mib = np.concatenate([[p.memory_mib[0]], np.maximum(memory, 0.0)])
    return q


def _candidates(p: MultihopProblem, factor: np.ndarray, memory: np.ndarray,
                sizes: Sequence[int], chains: bool) -> list[ChainRoute]:
    """Single-client placements of ``p`` shaped by the others' load: the best one hop
    and (``chains``) the best chain, at each size and at that placement's best size."""
    q = _shaped(p, factor, memory)
    out: list[ChainRoute] = []
    for b in dict.fromkeys(sizes):
        found = None
        if chains:
            try:
                found = place(q, b)[1:3]
            except MultihopError:
                found = None
        else:
            hop = single_hop(q, stage_tables(q, b), b)
            found = None if hop is None else hop[1:3]
        if found is None:
            continue
        helpers, cuts = tuple(found[0]), tuple(found[1])
        out.append(ChainRoute(helpers, cuts, b))
        stages, _ = placement_stages(q, list(helpers), list(cuts))
        nb, _ = best_micro_batch(stages, p.batch_size)
        if nb != b:
            out.append(ChainRoute(helpers, cuts, nb))
    return out


def _loads(problem: ChainProblem, stages: Sequence[ClientStages], skip: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Busy time and memory of each helper over every client but ``skip``."""
    h = problem.num_helpers
    busy, mem = np.zeros(h), np.zeros(h)
    ids = {hid: v for v, hid in enumerate(problem.helper_ids)}
    for k, cs in enumerate(stages):
        if k == skip:
            continue
        for t, r in zip(cs.times, cs.resources, strict=True):
            if r:
                busy[r - 1] += t * cs.micro_batches
        for node, mib in list(cs.memory.items())[1:]:
            mem[ids[node]] += mib
    return busy, mem


def greedy_one_hop(problem: ChainProblem) -> ChainPlan | None:
    """Clients in decreasing order of work, each on its best helper given the others so
    far (see the module doc); a client no single helper can hold gets a chain."""
    k_count, h = problem.num_clients, problem.num_helpers
    work = [float(p.sample_ms[1:].min(axis=0).sum()) for p in problem.clients]
    count = np.zeros(h)
    memory = problem.helper_memory_mib.astype(float).copy()
    routes: list[ChainRoute | None] = [None] * k_count
    for k in sorted(range(k_count), key=lambda i: -work[i]):
        p = problem.clients[k]
        sizes = (p.batch_size, max(1, math.ceil(p.batch_size / 8)))
        best, best_t = None, math.inf
        for chains in (False, True):
            for route in _candidates(p, 1.0 + count, memory, sizes, chains):
                q = _shaped(p, 1.0 + count, memory)
                stages, _ = placement_stages(q, list(route.helpers), list(route.cuts))
                b = route.micro_batch
                t = pipeline_latency(stages, b, p.batch_size)
                if t < best_t:
                    best, best_t = route, t
            if best is not None:
                break
        if best is None:
            return None
        routes[k] = best
        cs = client_stages(problem, k, best)
        for node, mib in list(cs.memory.items())[1:]:
            v = problem.helper_ids.index(node)
            memory[v] -= mib
            count[v] += 1
    return judge_routes(problem, routes, "one-hop")  # type: ignore[arg-type]


def _client_options(p: MultihopProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
    """Client ``p``'s head/tail options ``(c1, c2)``, each one's least makespan (its own
    device's and links' busy time, :func:`option_thresholds`) and its offloaded work
    (batch time of the body on the fastest helper of each layer)."""
    c1, c2, threshold = option_thresholds(p)
    fastest = np.where(p.runnable[1:], p.sample_ms[1:], np.inf).min(axis=0)
    cum = np.concatenate([[0.0], np.cumsum(fastest)])
    return c1, c2, threshold, p.batch_size * (cum[c2] - cum[c1])


def _two_hop(p: MultihopProblem, c1: int, c2: int, load: np.ndarray, memory: np.ndarray,
             limit: float, price: np.ndarray) -> tuple[float, int, int, int] | None:
    """The best split of body ``c1:c2`` over two helpers ``g < h`` (``g`` runs
    ``c1:x``, ``h`` runs ``x:c2``): ``(larger load of the two after it, g, h, x)``, among
    the splits that fit their memory, with links ``client - g``, ``g - h`` and
    ``h - client`` and client links within ``limit``; ``None`` if there is none. A
    helper's load counts ``price[h]`` per MiB the split takes of its memory."""
    big_b = p.batch_size
    per_kib = 2.0 * KIB_TO_MS_AT_1MBIT
    cum = np.concatenate([np.zeros((p.num_helpers, 1)), np.cumsum(
        np.where(p.runnable[1:], p.sample_ms[1:], np.inf), axis=1)], axis=1)
    mem = np.concatenate([[0.0], np.cumsum(p.layer_memory_mib)])
    xs = np.arange(c1 + 1, c2)
    best = None
    raw_rate = p.link_rate_mbps
    for g in range(1, p.num_helpers + 1):
        if p.rate_mbps[0, g] <= 0 or big_b * per_kib * p.activation_kib[c1 - 1] / \
                raw_rate[0, g] + 2 * p.latency_ms[0, g] > limit:
            continue
        with np.errstate(invalid="ignore"):
            first = load[g - 1] + big_b * (cum[g - 1, xs] - cum[g - 1, c1]) + \
                price[g - 1] * (mem[xs] - mem[c1])
        first = np.where(mem[xs] - mem[c1] <= memory[g - 1] + 1e-9, first, np.inf)
        for h in range(g + 1, p.num_helpers + 1):
            if p.rate_mbps[g, h] <= 0 or p.rate_mbps[h, 0] <= 0 or big_b * per_kib * \
                    p.activation_kib[c2 - 1] / raw_rate[h, 0] + 2 * p.latency_ms[h, 0] \
                    > limit:
                continue
            with np.errstate(invalid="ignore"):
                second = load[h - 1] + big_b * (cum[h - 1, c2] - cum[h - 1, xs]) + \
                    price[h - 1] * (mem[c2] - mem[xs])
            second = np.where(mem[c2] - mem[xs] <= memory[h - 1] + 1e-9, second, np.inf)
            worse = np.nan_to_num(np.maximum(first, second), nan=np.inf)
            if worse.size and np.isfinite(worse.min()):
                i = int(np.argmin(worse))
                if best is None or worse[i] < best[0]:
                    best = (float(worse[i]), g, h, int(xs[i]))
    return best


def _three_hop(p: MultihopProblem, c1: int, c2: int, load: np.ndarray, memory: np.ndarray,
               limit: float, price: np.ndarray
               ) -> tuple[float, tuple[int, ...], tuple[int, ...]] | None:
    """As :func:`_two_hop` over three helpers ``g < m < h`` (``c1:x``, ``x:y``,
    ``y:c2``): ``(largest load of the three after it, helpers, cuts)`` or ``None``."""
    if c2 - c1 < 3 or p.num_helpers < 3:
        return None
    big_b = p.batch_size
    per_kib = 2.0 * KIB_TO_MS_AT_1MBIT
    cum = np.concatenate([np.zeros((p.num_helpers, 1)), np.cumsum(
        np.where(p.runnable[1:], p.sample_ms[1:], np.inf), axis=1)], axis=1)
    mem = np.concatenate([[0.0], np.cumsum(p.layer_memory_mib)])
    xs = np.arange(c1 + 1, c2)
    order = xs[:, None] < xs[None, :]

    def client_link(v: int, cut: int) -> float:
        if p.rate_mbps[0, v] <= 0:
            return math.inf
        return big_b * per_kib * p.activation_kib[cut - 1] / p.link_rate_mbps[0, v] + \
            2 * p.latency_ms[0, v]

    best = None
    with np.errstate(invalid="ignore"):
        for g, m, h in itertools.combinations(range(1, p.num_helpers + 1), 3):
            if p.rate_mbps[g, m] <= 0 or p.rate_mbps[m, h] <= 0 or \
                    client_link(g, c1) > limit or client_link(h, c2) > limit:
                continue
            first = load[g - 1] + big_b * (cum[g - 1, xs] - cum[g - 1, c1]) + \
                price[g - 1] * (mem[xs] - mem[c1])
            first = np.where(mem[xs] - mem[c1] <= memory[g - 1] + 1e-9, first, np.inf)
            last = load[h - 1] + big_b * (cum[h - 1, c2] - cum[h - 1, xs]) + \
                price[h - 1] * (mem[c2] - mem[xs])
            last = np.where(mem[c2] - mem[xs] <= memory[h - 1] + 1e-9, last, np.inf)
            middle = load[m - 1] + big_b * (cum[m - 1, xs][None, :] - cum[m - 1, xs][:, None]) \
                + price[m - 1] * (mem[xs][None, :] - mem[xs][:, None])
            middle = np.where(order & (mem[xs][None, :] - mem[xs][:, None]
                                       <= memory[m - 1] + 1e-9), middle, np.inf)
            worse = np.nan_to_num(np.maximum(np.maximum(first[:, None], middle),
                                             last[None, :]), nan=np.inf)
            i, j = np.unravel_index(int(np.argmin(worse)), worse.shape)
            if np.isfinite(worse[i, j]) and (best is None or worse[i, j] < best[0]):
                best = (float(worse[i, j]), (g, m, h), (c1, int(xs[i]), int(xs[j]), c2))
    return best


def load_balanced(problem: ChainProblem, options: Sequence[tuple[np.ndarray, ...]],
                  limit: float, scaled: bool, chains: bool = False
                  ) -> list[ChainRoute] | None:
    """:func:`_balanced_placement` (up to three hops with ``chains``) at each client's
    best micro-batch size (:func:`_sized`); ``None`` when memory cannot hold it."""
    placed = _balanced_placement(problem, options, limit, 3 if chains else 1)
    return None if placed is None else _sized(problem, placed, scaled)


def _balanced_placement(problem: ChainProblem, options: Sequence[tuple[np.ndarray, ...]],
                        limit: float, hops: int, price: np.ndarray | None = None,
                        by_link: bool = False
                        ) -> list[tuple[tuple[int, ...], tuple[int, ...]]] | None:
    """Routes balancing the helpers' load for a client time limit ``limit``.

    Every client keeps the largest head and tail (least offloaded work) whose own and
    link busy time is at most ``limit``; then, largest offloaded work first, each body
    goes to the helper whose load after it is least, among the helpers with memory left
    and a link whose busy time is within ``limit`` (any linked helper if none); with
    ``hops`` of 2 or 3, a split over two (or three) helpers in route order is taken
    instead when it leaves the largest of their loads lower by more than 5% (10%): the
    extra hops cost links and overheads per micro-batch. With ``price`` (ms per MiB, per
    helper) a choice's load on a helper also counts the memory it takes there, so
    scarce memory goes to the layers that gain most from it. ``by_link``: the clients
    whose best link is slowest go first instead (they have the fewest helpers to
    choose from). Returns each client's
    ``(helpers, cuts)``; ``None`` when memory cannot hold the bodies.
    """
    h_count = problem.num_helpers
    load = np.zeros(h_count)
    memory = problem.helper_memory_mib.astype(float).copy()
    chosen = _kept(options, limit)
    price = np.zeros(h_count) if price is None else price
    placed: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    per_kib = 2.0 * KIB_TO_MS_AT_1MBIT
    order = (sorted(chosen, key=lambda c: problem.clients[c[1]].link_rate_mbps[0, 1:].max())
             if by_link else sorted(chosen, key=lambda c: -c[0]))
    for _, k, c1, c2 in order:
        p = problem.clients[k]
        helper_work = p.batch_size * p.sample_ms[1:, c1:c2].sum(axis=1)
        need = float(p.layer_memory_mib[c1:c2].sum())
        rate = p.link_rate_mbps[0, 1:]
        act = p.activation_kib[c1 - 1] + p.activation_kib[c2 - 1]
        with np.errstate(divide="ignore"):
            link = np.where(rate > 0, p.batch_size * per_kib * act / rate
                            + 4 * p.latency_ms[0, 1:], np.inf)
        ok = p.runnable[1:, c1:c2].all(axis=1) & (need <= memory + 1e-9) & np.isfinite(link)
        after = np.where(ok, load + helper_work + price * need, np.inf)
        after = np.where(link <= limit, after, after + 1e12)  # slow links last
        v = int(np.argmin(after))
        if hops >= 2 and c2 - c1 >= 2 and h_count >= 2:
            # a split over two (three) helpers must lower the largest of their loads by
            # 5% (10%) against one helper: the extra hops cost links and overheads
            splits = []
            two = _two_hop(p, c1, c2, load, memory, limit, price)
            if two is not None:
                splits.append((two[0] / 0.95, (two[1], two[2]), (c1, two[3], c2)))
            three = (_three_hop(p, c1, c2, load, memory, limit, price) if hops >= 3
                     else None)
            if three is not None:
                splits.append((three[0] / 0.9, three[1], three[2]))
            if splits and min(splits)[0] < after[v]:
                _, helpers, cuts = min(splits)
                for u, a, b in zip(helpers, cuts[:-1], cuts[1:], strict=True):
                    load[u - 1] += p.batch_size * p.sample_ms[u, a:b].sum()
                    memory[u - 1] -= p.layer_memory_mib[a:b].sum()
                placed[k] = (tuple(helpers), tuple(cuts))
                continue
        if not np.isfinite(after[v]):
            return None
        load[v] += helper_work[v]
        memory[v] -= need
        placed[k] = ((v + 1,), (c1, c2))
    return [placed[k] for k in range(problem.num_clients)]


def _kept(options: Sequence[tuple[np.ndarray, ...]], limit: float
          ) -> list[tuple[float, int, int, int]]:
    """``(offloaded work, client, c1, c2)``: each client's option with the least
    offloaded work among those within ``limit`` (the fastest option if none is)."""
    chosen = []
    for k, (c1, c2, threshold, work) in enumerate(options):
        fits = threshold <= limit
        if not fits.any():
            fits = threshold <= threshold.min()
        i = np.flatnonzero(fits)[np.argmin(work[fits])]
        chosen.append((float(work[i]), k, int(c1[i]), int(c2[i])))
    return chosen


def _sized(problem: ChainProblem, placed: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
           scaled: bool) -> list[ChainRoute]:
    """Routes of ``(helpers, cuts)`` at each client's best micro-batch size for its stages,
    each helper's times multiplied by the number of clients sharing it when ``scaled``."""
    count = np.zeros(problem.num_helpers + 1)
    for helpers, _ in placed:
        count[list(helpers)] += 1
    routes = []
    for p, (helpers, cuts) in zip(problem.clients, placed, strict=True):
        stages, _ = placement_stages(p, list(helpers), list(cuts))
        if scaled:
            for i, v in enumerate(helpers, start=1):
                f = max(1.0, count[v])
                stages[i] = Stage(stages[i].name, stages[i].a * f, stages[i].c * f)
        b, _ = best_micro_batch(stages, p.batch_size)
        routes.append(ChainRoute(tuple(helpers), tuple(cuts), b))
    return routes


#: Client time limits (x the largest least option time) of the constructions, the most
#: often best first, and the memory prices tried at each (x the mean helper load per MiB).
BALANCE_FACTORS = (1.6, 1.4, 1.8, 1.2, 2.0, 1.0, 2.4)
BALANCE_PRICES = (0.0, 0.25, 1.0)


def balanced_plans(problem: ChainProblem, cache: _StageCache, deadline: float
                   ) -> tuple[ChainPlan | None, ChainPlan | None]:
    """The best judged load-balanced plans (:func:`_balanced_placement`), one-hop and
    with splits over two or three helpers, over the client time limits
    ``BALANCE_FACTORS`` x the largest of the clients' least option times and memory
    prices ``BALANCE_PRICES`` x the mean helper load per MiB of helper memory (splits
    only; the outer limits without prices), each at both micro-batch rules
    (:func:`_sized`), until ``deadline`` (the one-hop runs and the first limit's splits
    whatever the time)."""
    options = [_client_options(p) for p in problem.clients]
    if any(o[0].size == 0 for o in options):
        return None, None
    floor = max(float(o[2].min()) for o in options)
    best: dict[bool, ChainPlan | None] = {False: None, True: None}
    # one hop at every limit first (cheap, and the best one-hop plan is a baseline),
    # then the splits; the one-hop runs and the first limit's splits run whatever the time
    runs = [(factor, 0.0, 1, False) for factor in BALANCE_FACTORS] + [
        (factor, alpha, hops, by_link) for factor in BALANCE_FACTORS
        for alpha in BALANCE_PRICES for hops in (2, 3) for by_link in (False, True)
        if (alpha == 0 or 1.2 <= factor <= 2.0) and (alpha == 0 or not by_link)]
    forced = len(BALANCE_FACTORS) + 2
    for i, (factor, alpha, hops, by_link) in enumerate(runs):
        if i >= forced and time.perf_counter() >= deadline:
            break
        limit = floor * factor
        price = None
        if alpha:
            offloaded = sum(c[0] for c in _kept(options, limit))
            price = alpha * offloaded / problem.num_helpers / np.maximum(
                problem.helper_memory_mib, 1e-9)
        placed = _balanced_placement(problem, options, limit, hops, price, by_link)
        if placed is None:
            continue
        chains = hops > 1
        for scaled in (True, False):
            plan = judge_routes(problem, _sized(problem, placed, scaled),
                                "chains" if chains else "one-hop", cache, final=False)
            if plan is not None and (best[chains] is None or
                                     plan.makespan < best[chains].makespan):
                best[chains] = plan
    return best[False], best[True]


#: Client latency limits of the column-generation construction (x the best makespan
#: judged so far).
COLUMN_FACTORS = (1.0, 0.85)


def column_plan(problem: ChainProblem, cache: _StageCache, seeds: Sequence[ChainPlan],
                deadline: float, least: float = 0.0) -> ChainPlan | None:
    """The best judged plan of :func:`~flsplit.plan.multihop.chain_columns.column_routes`
    over the latency limits ``COLUMN_FACTORS`` x the best makespan of ``seeds`` (until
    ``deadline``; the first limit gets at least ``least`` seconds, whatever the
    deadline), started from the routes of ``seeds``, at the columns' micro-batch
    sizes and both rules of :func:`_sized`, each with both list scheduling rules."""
    thresholds = [option_thresholds(p, pipeline=True) for p in problem.clients]
    if not seeds or any(t[0].size == 0 for t in thresholds):
        return None
    target = min(plan.makespan for plan in seeds)
    placed = [[(r.helpers, r.cuts) for r in plan.routes] for plan in seeds]
    best = None
    deadline = max(deadline, time.perf_counter() + least)
    for i, factor in enumerate(COLUMN_FACTORS):
        now = time.perf_counter()
        if now >= deadline:
            break
        limit = target * factor
        options = [np.column_stack([c1[t <= limit], c2[t <= limit]])
                   for c1, c2, t in thresholds]
        share = (deadline - now) / (len(COLUMN_FACTORS) - i)
        if i == 0:
            share = max(share, least)
        routes = column_routes(problem, options, limit, placed, now + share)
        if routes is None:
            continue
        variants = [[ChainRoute(h, c, b) for h, c, b in routes],
                    _sized(problem, [(h, c) for h, c, _ in routes], True)]
        for j, (sized, remaining) in enumerate(itertools.product(variants, (True, False))):
            if j and time.perf_counter() >= deadline:
                break
            plan = judge_routes(problem, sized, "chains", cache, final=False,
                                remaining=remaining)
            if plan is not None and (best is None or plan.makespan < best.makespan):
                best = plan
    return best


def _cheap_moves(problem: ChainProblem, route: ChainRoute, k: int, rng: random.Random
                 ) -> list[ChainRoute]:
    """Another micro-batch count, or one layer moved across one cut."""
    big_b = problem.clients[k].batch_size
    m = math.ceil(big_b / route.micro_batch)
    out = []
    for new_m in {m - 1, m + 1, m - 2, m + 2, max(1, m // 2), 2 * m, 3 * m // 2 + 1}:
        if 1 <= new_m <= big_b:
            b = math.ceil(big_b / new_m)
            if b != route.micro_batch:
                out.append(ChainRoute(route.helpers, route.cuts, b))
    for i in range(len(route.cuts)):
        for d in (-1, 1):
            cuts = list(route.cuts)
            cuts[i] += d
            out.append(ChainRoute(route.helpers, tuple(cuts), route.micro_batch))
    for i in range(len(route.helpers)):  # one hop to another helper (same ranges)
        for w in range(1, problem.num_helpers + 1):
            if w not in route.helpers:
                helpers = list(route.helpers)
                helpers[i] = w
                if helpers == sorted(helpers):
                    out.append(ChainRoute(tuple(helpers), route.cuts, route.micro_batch))
    rng.shuffle(out)
    return out


def _swap_moves(plan: ChainPlan, k: int, rng: random.Random, count: int = 6
                ) -> list[list[ChainRoute]]:
    """Client ``k`` and another client exchange their helpers (each keeps its cuts
    where the hop counts match)."""
    out = []
    others = [j for j in range(len(plan.routes)) if j != k]
    rng.shuffle(others)
    mine = plan.routes[k]
    for j in others[:count]:
        theirs = plan.routes[j]
        if theirs.helpers == mine.helpers or len(theirs.helpers) != len(mine.helpers):
            continue
        routes = list(plan.routes)
        routes[k] = ChainRoute(theirs.helpers, mine.cuts, mine.micro_batch)
        routes[j] = ChainRoute(mine.helpers, theirs.cuts, theirs.micro_batch)
        out.append(routes)
    return out


def _placement_moves(problem: ChainProblem, plan: ChainPlan, stages: Sequence[ClientStages],
                     k: int, chains: bool) -> list[ChainRoute]:
    """Re-placements of client ``k`` given the other clients' helper load and memory."""
    p = problem.clients[k]
    route = plan.routes[k]
    busy, mem = _loads(problem, stages, k)
    horizon = max(plan.makespan or 1.0, 1e-9)
    factor = 1.0 + busy / horizon
    memory = problem.helper_memory_mib - mem
    out = _candidates(p, factor, memory, [route.micro_batch], chains=False)
    if chains:
        out += _candidates(p, factor, memory, [route.micro_batch], chains=True)
    return [r for r in out if r != route]


def _better(cand: ChainPlan, current: ChainPlan) -> bool:
    """A lower makespan, or the same makespan with the clients' finishes squared lower
    (several clients finish near the makespan: bringing the others forward lets the
    next moves lower it)."""
    if cand.makespan < current.makespan - 1e-9:
        return True
    return (cand.makespan <= current.makespan + 1e-9 and
            cand.info.get("spread", math.inf) < current.info.get("spread", math.inf)
            * (1 - 1e-9))


def local_search(problem: ChainProblem, plan: ChainPlan, deadline: float, chains: bool,
                 seed: int = 0) -> ChainPlan:
    """Improve ``plan`` by single-client moves until ``deadline`` (``time.perf_counter``);
    at a local optimum (no move of any client gains) two random clients take a random
    feasible cheap move or swap and the descent goes on. Returns the best plan judged."""
    rng = random.Random(seed)
    cache = _StageCache(problem)
    best = current = plan
    stale: set[int] = set()
    while time.perf_counter() < deadline:
        if len(stale) >= problem.num_clients:  # local optimum: perturb and go on
            if SEARCH_RESCHEDULE:
                polished = reschedule(problem, current, deadline, rng, cache,
                                      rounds=SEARCH_RESCHEDULE)
                if polished is not current:
                    current = polished
                    if current.makespan < best.makespan - 1e-9:
                        best = current
                    stale.clear()
                    continue
            current = _perturbed(problem, current, cache, rng, chains) or best
            stale.clear()
            continue
        stages = cache.all(current.routes)
        assert stages is not None
        _, finish = simulate(stages, current.orders)
        order = sorted((k for k in range(problem.num_clients) if k not in stale),
                       key=lambda i: -finish[i])
        k = order[0] if rng.random() < 0.7 else rng.choice(order)
        improved = False
        for kind in ("cheap", "swap", "placement"):
            if kind == "swap":
                moves = _swap_moves(current, k, rng)
            else:
                single = (_cheap_moves(problem, current.routes[k], k, rng) if kind == "cheap"
                          else _placement_moves(problem, current, stages, k, chains))
                moves = [[*current.routes[:k], r, *current.routes[k + 1:]] for r in single
                         if chains or len(r.helpers) <= len(current.routes[k].helpers)]
            for routes in moves:
                if time.perf_counter() >= deadline:
                    break
                cand = judge_routes(problem, routes, current.method, cache, final=False,
                                    remaining=SEARCH_REMAINING,
                                    weight=current.info.get("weight"))
                if cand is not None and _better(cand, current):
                    current, improved = cand, True
                    break
            if improved:
                break
        if improved:
            stale.clear()
            if current.makespan < best.makespan - 1e-9:
                best = current
        else:
            stale.add(k)
    best = copy.copy(best)
    best.makespan = evaluate_chain(problem, best)
    return best


def _perturbed(problem: ChainProblem, plan: ChainPlan, cache: _StageCache,
               rng: random.Random, chains: bool, clients: int = 2) -> ChainPlan | None:
    """``plan`` after a random feasible cheap move or swap of ``clients`` random clients
    (whatever the makespan); ``None`` if none was feasible."""
    routes = list(plan.routes)
    moved = False
    for k in rng.sample(range(problem.num_clients), min(clients, problem.num_clients)):
        options = [[*routes[:k], r, *routes[k + 1:]]
                   for r in _cheap_moves(problem, routes[k], k, rng)]
        options += _swap_moves(ChainPlan(routes, {}), k, rng)
        rng.shuffle(options)
        for cand in options:
            if cache.all(cand) is not None:
                routes, moved = cand, True
                break
    if not moved:
        return None
    return judge_routes(problem, routes, plan.method, cache, final=False,
                        remaining=SEARCH_REMAINING, weight=plan.info.get("weight"))


def plan_chains(problem: ChainProblem, time_limit: float = DEFAULT_CHAIN_TIME_LIMIT,
                seed: int = 0) -> ChainPlan:
    """Plan every client's chain, layer ranges, micro-batches and the helper orders.

    Parameters
    ----------
    problem
        The instance.
    time_limit
        Seconds for the local search (the constructions run first, whatever the limit).
    seed
        Seed of the local search's random choices.

    Returns
    -------
    ChainPlan
        The best judged plan; ``info`` holds the makespans of the round-robin and the
        best one-hop plans (``None`` if infeasible).

    Raises
    ------
    MultihopError
        When no construction finds a feasible plan.
    """
    start = time.perf_counter()
    deadline = start + time_limit
    rr = round_robin(problem)
    one = greedy_one_hop(problem)
    balanced, split = balanced_plans(problem, _StageCache(problem),
                                     start + 0.35 * time_limit)
    if balanced is not None and (one is None or balanced.makespan < one.makespan):
        one = balanced
    if one is not None:
        one = local_search(problem, one, start + 0.4 * time_limit, chains=False, seed=seed)
        one.method = "one-hop"
    columns = column_plan(problem, _StageCache(problem),
                          [p for p in (split, one) if p is not None],
                          start + 0.7 * time_limit, least=0.15 * time_limit)
    starts = [p for p in (one, rr, split, columns) if p is not None]
    if not starts:
        raise MultihopError("helpers[*].memory_mib", "no feasible plan found: neither "
                            "round-robin chains nor greedy placement fit the helpers' "
                            "memory and links")
    best = min(starts, key=lambda p: p.makespan)
    rng = random.Random(seed + 2)
    polish = start + (1.0 - FINAL_RESCHEDULE) * time_limit
    chained = local_search(problem, copy.copy(best), polish if FINAL_RESCHEDULE else deadline,
                           chains=True, seed=seed + 1)
    if chained.makespan < best.makespan - 1e-9:
        best = chained
        best.method = "chains"
    if FINAL_RESCHEDULE:
        polished = reschedule(problem, best, deadline, rng, rounds=10_000)
        if polished is not best:
            polished.makespan = evaluate_chain(problem, polished)
            if polished.makespan < best.makespan - 1e-9:
                best = polished
    best = copy.copy(best)
    best.solve_time = time.perf_counter() - start
    best.info = {"round_robin_ms": None if rr is None else rr.makespan,
                 "round_robin_chain_length": None if rr is None else rr.info["chain_length"],
                 "one_hop_ms": None if one is None else one.makespan,
                 "winner": best.method,
                 "chained_clients": sum(len(r.helpers) > 1 for r in best.routes)}
    return best
