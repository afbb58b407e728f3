"""Routes for many clients by column generation: one priced route per client.

A *column* is one client's route (head/tail cuts, helpers in route order, one
contiguous layer range per helper, a micro-batch size) with its work on each helper
(``M x`` the helper's overhead plus ``B x`` the range's per-sample time) and the memory
it takes there. Its micro-batch count ``M`` is the least whose standalone pipeline
latency is within ``LATENCY_SHARE`` of the latency limit: every micro-batch costs each
helper of the route its overhead, so fewer micro-batches leave the helpers more time,
and a client whose own pipeline is well within the round can wait for busy helpers.

The *master* chooses a convex combination of columns per client so that the largest
helper work is least, within every helper's memory (memory beyond it costs
``OVERFLOW_MS_PER_MIB``, so the first columns need not fit): a small linear programme
(HiGHS), whose duals price helper time (``y_h`` per ms) and memory (``pi_h`` per MiB).
The *pricing* (:func:`price_routes`) finds each client's routes of least priced cost
``sum_h y_h work_h + pi_h mem_h`` by one dynamic programme over the layers for all
clients (helpers in route order, every hop on an existing link, the client's links
within ``LINK_SHARE`` of the limit), over the head/tail options whose least own and
link time is within the limit; a route cheaper than the client's convexity dual enters
the master. When no route does (or at ``1 - ROUNDING_SHARE`` of the time), each client
takes its column of largest share, and column changes of one or two clients at once
lower the largest helper work while they can (:func:`_rounded`).

The routes balance the helpers' work the way the memory-aware lower bound's relaxation
does (:func:`~flsplit.plan.multihop.chain_bound.memory_load_bound`: every layer on the
helpers where it is cheapest for the memory it takes), but as whole contiguous ranges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix

from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.multihop.chain_problem import ChainProblem
from flsplit.plan.multihop.evaluation import placement_stages
from flsplit.plan.multihop.problem import MultihopError, MultihopProblem


@dataclass(frozen=True)
class Column:
    """One client's route and what it takes from every helper (index ``h - 1``)."""

    helpers: tuple[int, ...]
    cuts: tuple[int, ...]
    micro_batch: int
    work: tuple[float, ...]
    memory: tuple[float, ...]
    latency: float


def make_column(p: MultihopProblem, helpers: Sequence[int], cuts: Sequence[int],
                target: float = math.inf) -> Column | None:
    """The column of route ``(helpers, cuts)`` of client ``p`` at the fewest micro-batches
    whose standalone pipeline latency is at most ``target`` (each micro-batch costs every
    helper its overhead), else at its best standalone micro-batch size; ``None`` if the
    route is infeasible on its own."""
    try:
        stages, _ = placement_stages(p, list(helpers), list(cuts))
    except MultihopError:
        return None
    big_b = p.batch_size
    sizes = np.array(sorted({math.ceil(big_b / m) for m in range(1, big_b + 1)},
                            reverse=True), dtype=float)
    serial = sum(s.a for s in stages if s.serial)  # once per batch, never the bottleneck
    a = np.array([s.a for s in stages if not s.serial])
    c = np.array([s.c for s in stages if not s.serial])
    times = a[None, :] + sizes[:, None] * c[None, :]
    latency = serial + times.sum(axis=1) + (np.ceil(big_b / sizes) - 1) * times.max(axis=1)
    fits = np.flatnonzero(latency <= target)
    i = int(fits[0]) if fits.size else int(np.argmin(latency))
    b = int(sizes[i])
    m = math.ceil(big_b / b)
    work = np.zeros(p.num_helpers)
    memory = np.zeros(p.num_helpers)
    for v, x, z in zip(helpers, cuts[:-1], cuts[1:], strict=True):
        work[v - 1] = (m * (p.overhead_ms[v] + float(p.call_ms[v, x:z].sum()))
                       + big_b * float(p.sample_ms[v, x:z].sum()))
        memory[v - 1] = float(p.layer_memory_mib[x:z].sum())
    return Column(tuple(int(v) for v in helpers), tuple(int(c) for c in cuts), b,
                  tuple(work), tuple(memory), float(latency[i]))


def _one_cut(p: MultihopProblem) -> np.ndarray:
    """``[c, h]``: time (ms) of client ``p``'s link to helper ``h + 1`` carrying cut ``c``
    for a whole batch (``inf`` without a link)."""
    rate, lat = p.rate_mbps[0, 1:], p.latency_ms[0, 1:]
    act = np.concatenate([[0.0], p.activation_kib])  # act[c]: what cut c carries
    per_batch = 2.0 * KIB_TO_MS_AT_1MBIT * p.batch_size
    inv_rate = np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.inf)
    return 2 * lat[None, :] + per_batch * act[:, None] * inv_rate[None, :]


def price_routes(clients: Sequence[MultihopProblem], options: Sequence[np.ndarray],
                 y: np.ndarray, pi: np.ndarray, hop_ms: np.ndarray, max_hops: int = 3,
                 link_limit: float = math.inf, top: int = 8
                 ) -> list[list[tuple[float, tuple[int, ...], tuple[int, ...]]]]:
    """For each client the ``top`` head/tail options (rows ``(c1, c2)`` of
    ``options[k]``) of least priced cost, each with its route of least priced cost,
    ``(cost, helpers, cuts)``, cheapest first (empty if none).

    A layer ``l`` on helper ``h`` costs ``y_h B t_{h,l} + pi_h mem_l``; every hop on
    ``h`` adds ``y_h hop_ms_h`` (its overheads); at most ``max_hops`` helpers, each hop
    on an existing helper-helper link. The client's link(s) must carry the batch within
    ``link_limit`` (ms): one helper's link both cuts, a chain's first and last link one
    cut each. One dynamic programme serves all ``clients`` (they share the helpers; the
    batch size and the helpers' times are client 0's): its state is ``(c1, first
    helper, hops so far, current helper)`` after each layer.
    """
    p0 = clients[0]
    layers, h_count, big_b = p0.num_layers, p0.num_helpers, p0.batch_size
    inf = np.inf
    out: list[list[tuple[float, tuple[int, ...], tuple[int, ...]]]] = [[] for _ in clients]
    live = [k for k, o in enumerate(options) if o.size]
    if not live:
        return out
    # a layer's fixed time per call is paid per micro-batch: priced at as many as a hop
    assert p0.call_ms is not None  # set in __post_init__
    cost = np.where(p0.runnable[1:], y[:, None] * (big_b * p0.sample_ms[1:]
                                                   + PRICED_MICRO_BATCHES * p0.call_ms[1:])
                    + pi[:, None] * p0.layer_memory_mib[None, :], inf)  # (H, L)
    hop = y * hop_ms
    # forward[g, h]: a hop from helper g to a later helper h exists
    forward = (p0.rate_mbps[1:, 1:] > 0) & np.triu(np.ones((h_count, h_count), bool), 1)
    starts = np.zeros(layers + 1, bool)
    for k in live:
        starts[np.unique(options[k][:, 0])] = True
    one_cut = {k: _one_cut(clients[k]) for k in live}
    c1_min = int(min(options[k][:, 0].min() for k in live))
    c2_max = int(max(options[k][:, 1].max() for k in live))
    eye = np.eye(h_count, dtype=bool)
    # f[c1, s, j, h]: least cost of layers c1 .. l - 1, first helper s, j + 1 hops, on h
    f = np.full((layers + 1, h_count, max_hops, h_count), inf)
    back: dict[int, np.ndarray] = {}  # layer -> previous helper (-1 same, -2 start)
    history: dict[int, np.ndarray] = {}  # c2 -> f after layer c2 - 1
    for layer in range(c1_min, c2_max):
        new = f + cost[:, layer]
        prev = np.full(f.shape, -1, dtype=np.int64)
        before = np.where(forward, f[:, :, :-1, :, None], inf)  # (c1, s, j, g, h)
        g = np.argmin(before, axis=3)
        cand = np.min(before, axis=3) + hop + cost[:, layer]
        better = cand < new[:, :, 1:]
        new[:, :, 1:][better] = cand[better]
        prev[:, :, 1:][better] = g[better]
        if starts[layer]:
            new[layer, :, 0] = np.where(eye, (hop + cost[:, layer])[:, None], inf)
            prev[layer, :, 0] = -2
        f = new
        back[layer] = prev
        history[layer + 1] = f
    per_state = h_count * max_hops * h_count
    for k in live:
        c1s, c2s = options[k][:, 0].astype(int), options[k][:, 1].astype(int)
        oc = one_cut[k]
        values = np.stack([history[c2][c1] for c1, c2 in zip(c1s, c2s, strict=True)])
        ok = (oc[c1s] <= link_limit)[:, :, None, None] & \
            (oc[c2s] <= link_limit)[:, None, None, :]
        ok = np.broadcast_to(ok, values.shape).copy()
        ok[:, :, 0] &= eye[None] & ((oc[c1s] + oc[c2s]) <= link_limit)[:, :, None]
        flat = np.where(ok, values, inf).reshape(c1s.size, per_state)
        at = np.argmin(flat, axis=1)
        totals = flat[np.arange(c1s.size), at]
        for i in np.argsort(totals, kind="stable")[:top]:
            if not np.isfinite(totals[i]):
                break
            c1, c2 = int(c1s[i]), int(c2s[i])
            s_, rest = divmod(int(at[i]), max_hops * h_count)
            j, h = divmod(rest, h_count)
            helpers, cuts = [h + 1], [c2]
            layer = c2 - 1
            while True:
                step = int(back[layer][c1, s_, j, h])
                if step == -2:
                    cuts.append(layer)
                    break
                if step >= 0:
                    cuts.append(layer)
                    h, j = step, j - 1
                    helpers.append(h + 1)
                layer -= 1
            out[k].append((float(totals[i]), tuple(reversed(helpers)),
                           tuple(reversed(cuts))))
    return out


#: Head/tail options (cheapest priced first) tried per client and pricing round for a
#: route within the latency limit.
PRICED_OPTIONS = 8

#: A column takes the fewest micro-batches whose standalone latency is within this share
#: of the latency limit (fewer micro-batches cost the helpers fewer overheads).
LATENCY_SHARE = 0.45

#: Share of :func:`column_routes`' time left to rounding the master's solution.
ROUNDING_SHARE = 0.3

#: Largest share of the latency limit a client's link may be busy in a priced route.
LINK_SHARE = 0.75

#: Cost (ms of the largest helper work per MiB) of memory beyond a helper's capacity in
#: the master, so that it is feasible from the first columns on; the rounded choice
#: allows none.
OVERFLOW_MS_PER_MIB = 1e4

#: Micro-batches per hop assumed by the pricing's overhead term.
PRICED_MICRO_BATCHES = 8


def _master(columns: Sequence[Sequence[Column]], capacity: np.ndarray):
    """The master LP over ``columns[k]`` (scipy's result). Variables: ``Z``, one share
    per column (flattened client by client), each helper's memory overflow."""
    flat = [c for cols in columns for c in cols]
    h_count = capacity.size
    n_cols = len(flat) + 1
    n = n_cols + h_count
    rows, cols, vals = [], [], []
    for i, c in enumerate(flat, start=1):
        for h in range(h_count):
            if c.work[h]:
                rows.append(h)
                cols.append(i)
                vals.append(c.work[h])
            if c.memory[h]:
                rows.append(h_count + h)
                cols.append(i)
                vals.append(c.memory[h])
    for h in range(h_count):
        rows += [h, h_count + h]
        cols += [0, n_cols + h]
        vals += [-1.0, -1.0]  # busy - Z <= 0, memory - overflow <= capacity
    a_ub = csr_matrix((vals, (rows, cols)), shape=(2 * h_count, n))
    b_ub = np.r_[np.zeros(h_count), capacity]
    k_count = len(columns)
    owner = np.repeat(np.arange(k_count), [len(c) for c in columns])
    a_eq = csr_matrix((np.ones(len(flat)), (owner, np.arange(1, n_cols))),
                      shape=(k_count, n))
    cost = np.zeros(n)
    cost[0] = 1.0
    cost[n_cols:] = OVERFLOW_MS_PER_MIB
    return linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(k_count),
                   bounds=(0, None), method="highs")


def column_routes(problem: ChainProblem, options: Sequence[np.ndarray], limit: float,
                  seeds: Sequence[Sequence[tuple[tuple[int, ...], tuple[int, ...]]]],
                  deadline: float, max_hops: int = 3, rounds: int = 30
                  ) -> list[tuple[tuple[int, ...], tuple[int, ...], int]] | None:
    """One route per client by column generation (see the module docstring).

    ``options[k]``: client ``k``'s allowed ``(c1, c2)`` rows; ``limit``: the longest
    standalone pipeline latency a column may have; ``seeds``: plans (each client's
    ``(helpers, cuts)``) whose routes start the master; ``deadline``:
    ``time.perf_counter`` value to stop at (the first pricing and the rounding's first
    pass run whatever the time). Returns each client's ``(helpers, cuts, micro-batch
    size)`` or ``None`` (some client has no column, or the choice overflows memory).
    """
    k_count, h_count = problem.num_clients, problem.num_helpers
    capacity = problem.helper_memory_mib.astype(float)
    columns: list[list[Column]] = [[] for _ in range(k_count)]
    known: list[set] = [set() for _ in range(k_count)]

    def add(k: int, helpers, cuts) -> bool:
        key = (tuple(helpers), tuple(cuts))
        if key in known[k]:
            return False
        known[k].add(key)
        col = make_column(problem.clients[k], helpers, cuts, LATENCY_SHARE * limit)
        if col is None or col.latency > limit:
            return False
        columns[k].append(col)
        return True

    for plan in seeds:
        for k, (helpers, cuts) in enumerate(plan):
            add(k, helpers, cuts)

    def price(y: np.ndarray, pi: np.ndarray, below: Sequence[float]) -> int:
        # per client, the cheapest new priced route within the latency limit among its
        # first few options, if cheaper than below[k]; one programme per group of
        # clients sharing the helpers' times
        added = 0
        for group in groups:
            found = price_routes([problem.clients[k] for k in group],
                                 [options[k] for k in group], y, pi, hop_ms, max_hops,
                                 LINK_SHARE * limit, PRICED_OPTIONS)
            for k, routes in zip(group, found, strict=True):
                for total, helpers, cuts in routes[:PRICED_OPTIONS]:
                    if total >= below[k]:
                        break
                    if add(k, helpers, cuts):
                        added += 1
                        break
        return added

    groups: dict[tuple, list[int]] = {}
    for k, p in enumerate(problem.clients):
        assert p.call_ms is not None  # set in __post_init__
        key = (p.batch_size, p.sample_ms[1:].tobytes(), p.runnable[1:].tobytes(),
               p.overhead_ms[1:].tobytes(), p.call_ms[1:].tobytes())
        groups.setdefault(key, []).append(k)
    groups = list(groups.values())  # type: ignore[assignment]
    hop_ms = problem.clients[0].overhead_ms[1:] * PRICED_MICRO_BATCHES
    y = np.full(h_count, 1.0 / h_count)
    pi = np.zeros(h_count)
    price(y, pi, [math.inf] * k_count)
    if any(not cols for cols in columns):
        return None
    # the rounding gets the last ROUNDING_SHARE of the time
    pricing_end = time.perf_counter() + (1 - ROUNDING_SHARE) * (deadline - time.perf_counter())
    for _ in range(rounds):
        if time.perf_counter() >= pricing_end:
            break
        res = _master(columns, capacity)
        if res.status != 0:
            break
        y = np.maximum(-res.ineqlin.marginals[:h_count], 0.0)
        pi = np.maximum(-res.ineqlin.marginals[h_count:], 0.0)
        mu = res.eqlin.marginals
        added = price(y, pi, [m - 1e-7 * max(1.0, abs(m)) for m in mu])
        if not added:
            break
    res = _master(columns, capacity)
    if res.status != 0:
        return None
    picked = _rounded(columns, res.x, capacity, deadline)
    if picked is None:
        return None
    return [(c.helpers, c.cuts, c.micro_batch) for c in picked]


def _rounded(columns: Sequence[Sequence[Column]], x: np.ndarray, capacity: np.ndarray,
             deadline: float = math.inf) -> list[Column] | None:
    """One column per client: the master LP's largest share, then column changes of one
    client, or of two clients at once, while they lower (memory overflow, largest
    helper work, sum of the helper works squared) lexicographically, until none does or
    ``deadline``; ``None`` if memory still overflows."""
    choice, i = [], 1
    for cols in columns:
        choice.append(int(np.argmax(x[i:i + len(cols)])))
        i += len(cols)
    work = [np.array([c.work for c in cols]) for cols in columns]
    mem = [np.array([c.memory for c in cols]) for cols in columns]
    load = sum(work[k][j] for k, j in enumerate(choice))
    used = sum(mem[k][j] for k, j in enumerate(choice))

    def scores(loads: np.ndarray, useds: np.ndarray) -> np.ndarray:
        # rows of (overflow, largest work, sum of squares) for loads (..., H)
        over = np.maximum(useds - capacity, 0.0).sum(axis=-1)
        return np.stack([over, loads.max(axis=-1), (loads ** 2).sum(axis=-1)], axis=-1)

    def below(cand: np.ndarray, current: np.ndarray) -> bool:
        for a, b in zip(cand, current, strict=True):
            if a < b - 1e-9 * max(1.0, abs(b)):
                return True
            if a > b + 1e-9 * max(1.0, abs(b)):
                return False
        return False

    current = scores(load, used)
    k_count = len(columns)
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for k in range(k_count):
            loads = load - work[k][choice[k]] + work[k]
            useds = used - mem[k][choice[k]] + mem[k]
            sc = scores(loads, useds)
            j = int(np.lexsort(sc.T[::-1])[0])
            if j != choice[k] and below(sc[j], current):
                choice[k], load, used, current = j, loads[j], useds[j], sc[j]
                improved = True
        if improved:
            continue
        # two clients at once
        for k in range(k_count):
            for q in range(k + 1, k_count):
                base_load = load - work[k][choice[k]] - work[q][choice[q]]
                base_used = used - mem[k][choice[k]] - mem[q][choice[q]]
                loads = base_load + work[k][:, None, :] + work[q][None, :, :]
                useds = base_used + mem[k][:, None, :] + mem[q][None, :, :]
                sc = scores(loads, useds).reshape(-1, 3)
                best = int(np.lexsort(sc.T[::-1])[0])
                if below(sc[best], current):
                    j, r = divmod(best, len(columns[q]))
                    choice[k], choice[q] = j, r
                    load, used, current = loads[j, r], useds[j, r], sc[best]
                    improved = True
    if current[0] > 1e-9:
        return None
    return [columns[k][j] for k, j in enumerate(choice)]
