"""A lower bound on the optimal round makespan of a multi-client chain problem.

The bound is the largest of

- **standalone**: each client alone on all helpers (full helper memory, no other
  client), at its best micro-batch size: the exact single-client optimum, the least of
  :func:`~flsplit.plan.multihop.placement.place` over every distinct micro-batch size
  ``ceil(B / M)`` (for a given ``M`` the smallest size is best, as every stage time grows
  with it). Sharing helpers only delays a client, so the round lasts at least as long;
- **helper load**: for a makespan ``T``, client ``k`` can keep on its own device only a
  head and tail whose compute ``B x (per-sample time)`` is at most ``T`` (and which fit
  its memory); the rest of its body runs on helpers. With helper prices ``y_h > 0``
  (summing to 1), a layer's priced work is the least over the helpers of ``y_h x`` its
  time there, and all helpers together supply at most ``sum_h y_h T = T`` of it (the
  dual of assigning layers fractionally to helpers), so ``T`` is at least the least
  value where the clients' least priced offloaded work is ``<= T`` (bisection). The
  bound takes the best of equal prices and ``y_h ~ W_h^-a`` (``W_h``: helper ``h``'s
  time for the whole model). It ignores helper memory, per-micro-batch overheads and
  when each client's first micro-batch can reach a helper;
- **memory-aware load** (:func:`memory_load_bound`): a linear relaxation that assigns
  every client's body layers fractionally to the helpers with each helper's memory and
  busy time respected, each client's head, tail and links within the makespan, its
  body only on helpers at or after a first helper (and at or before a last helper)
  whose link to it carries the cut in time, plus the earliest time any helper task
  can start (see its docstring for the argument).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
from scipy.optimize import linprog

from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.multihop.chain_problem import ChainProblem
from flsplit.plan.multihop.placement import place
from flsplit.plan.multihop.problem import MultihopError, MultihopProblem


@dataclass
class ChainBound:
    """The bound (ms) and its parts: ``standalone[k]`` per client, ``load`` (the best
    helper-load bound: the priced one or the memory-aware one) and ``memory_load``."""

    value: float
    standalone: list[float]
    load: float
    memory_load: float = 0.0


def micro_batch_sizes(batch_size: int) -> list[int]:
    """Every distinct size ``ceil(B / M)``, ``M = 1 .. B`` (at most ``2 sqrt(B)``)."""
    return sorted({math.ceil(batch_size / m) for m in range(1, batch_size + 1)})


def standalone_latency(problem: MultihopProblem) -> float:
    """Exact least pipeline latency (ms) of the client alone over every placement and
    micro-batch size (``inf`` if none is feasible)."""
    best = math.inf
    for b in micro_batch_sizes(problem.batch_size):
        try:
            latency = place(problem, b)[0]
        except MultihopError:
            continue
        best = min(best, latency)
    return best


def _offload_options(p: MultihopProblem, fastest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Client busy time and least helper work of every feasible ``(c1, c2)``."""
    layers, big_b = p.num_layers, p.batch_size
    cum_c = np.concatenate([[0.0], np.cumsum(p.sample_ms[0])])
    cum_h = np.concatenate([[0.0], np.cumsum(fastest)])
    mem = np.concatenate([[0.0], np.cumsum(p.layer_memory_mib)])
    bad = np.concatenate([[0], np.cumsum(~p.runnable[0])])
    idx = np.arange(layers + 1)
    c1, c2 = idx[:, None], idx[None, :]
    ok = (c2 > c1) & (c1 >= p.min_head) & (c2 <= layers - p.min_tail)
    ok &= (mem[c1] + mem[-1] - mem[c2]) <= p.memory_mib[0] + 1e-9
    ok &= (bad[c1] + bad[-1] - bad[c2]) == 0
    client = big_b * (cum_c[c1] + cum_c[-1] - cum_c[c2]) + p.overhead_ms[0]
    helper = big_b * (cum_h[c2] - cum_h[c1])
    return client[ok], helper[ok]


def priced_load_bound(problem: ChainProblem, price: np.ndarray) -> float:
    """The helper-load bound (ms) for helper prices ``price`` (``> 0``, see the module
    docstring): the least ``T`` with ``sum_k min work_k(T) <= T``, where a layer's work
    is the least of ``price_h x`` its time on helper ``h`` over the helpers."""
    price = np.asarray(price, dtype=float) / float(np.sum(price))
    options = []
    for p in problem.clients:
        cost = np.where(p.runnable[1:], p.sample_ms[1:] * price[:, None], np.inf)
        options.append(_offload_options(p, cost.min(axis=0)))

    def excess(t: float) -> float:
        work = 0.0
        for client, helper in options:
            fit = helper[client <= t]
            if fit.size == 0:
                return math.inf
            work += float(fit.min())
        return work - t

    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, 2 * hi
        if hi > 1e15:
            return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo


def load_bound(problem: ChainProblem) -> float:
    """The best helper-load bound (ms) over a few price vectors: equal prices (every
    layer at the fastest helper, ``H`` helpers) and prices ``W_h^-a`` (``W_h``: helper
    ``h``'s time for the whole model, ``a`` in ``0.25 .. 2``), which charge the fast
    helpers more. Every price vector gives a valid bound (LP duality of the fractional
    assignment of layers to helpers), so their largest is one."""
    p = problem.clients[0]
    whole = np.where(p.runnable[1:], p.sample_ms[1:], 0.0).sum(axis=1)
    whole = np.where(whole > 0, whole, whole[whole > 0].min() if (whole > 0).any() else 1.0)
    prices = [np.ones(problem.num_helpers)] + [whole ** -a for a in
                                              (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)]
    return max(priced_load_bound(problem, y) for y in prices)


def _head_tail_grid(p: MultihopProblem
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every cut pair ``(c1, c2)`` of client ``p`` as two grids, the mask of those its
    device can hold and run (head and tail within its memory, every layer runnable there)
    and the cumulative per-sample time of its layers on the device (``cum_c[l]``: layers
    ``0 .. l-1``)."""
    layers = p.num_layers
    cum_c = np.concatenate([[0.0], np.cumsum(p.sample_ms[0])])
    mem = np.concatenate([[0.0], np.cumsum(p.layer_memory_mib)])
    bad = np.concatenate([[0], np.cumsum(~p.runnable[0])])
    idx = np.arange(layers + 1)
    c1, c2 = np.meshgrid(idx, idx, indexing="ij")
    ok = (c2 > c1) & (c1 >= p.min_head) & (c2 <= layers - p.min_tail)
    ok &= (mem[c1] + mem[-1] - mem[c2]) <= p.memory_mib[0] + 1e-9
    ok &= (bad[c1] + bad[-1] - bad[c2]) == 0
    return c1, c2, ok, cum_c


def option_thresholds(p: MultihopProblem, pipeline: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every feasible ``(c1, c2)`` of client ``p`` and the least makespan it allows: the
    larger of the client's busy time ``a + B x`` (per-sample time of the head and tail)
    and the least busy time of its link(s), ``4 latency + B x`` (both cuts' transfer
    time) on one helper's link, or for a chain (two helpers or more) the larger of the
    first and the last link's ``2 latency + B x`` (one cut's transfer time), at the
    least latency and the highest rate of the client's links. With ``pipeline``, also
    at least :func:`_pipeline_thresholds`."""
    big_b = p.batch_size
    c1, c2, ok, cum_c = _head_tail_grid(p)
    client = big_b * (cum_c[c1] + cum_c[-1] - cum_c[c2]) + p.overhead_ms[0]
    linked = p.rate_mbps[0, 1:] > 0
    if not linked.any():
        return c1[:0], c2[:0], client[:0]
    rates, lats = p.link_rate_mbps[0, 1:][linked], p.latency_ms[0, 1:][linked]
    per_batch = 2.0 * KIB_TO_MS_AT_1MBIT * big_b
    act = np.concatenate([[0.0], p.activation_kib])  # act[c]: what cut c carries
    one_hop = np.min([4 * lat + per_batch * (act[c1] + act[c2]) / rate
                      for rate, lat in zip(rates, lats, strict=True)], axis=0)
    chain = 2 * lats.min() + per_batch * np.maximum(act[c1], act[c2]) / rates.max()
    if linked.sum() < 2:
        chain = np.full_like(chain, np.inf)
    chain = np.where(c2 - c1 >= 2, chain, np.inf)
    threshold = np.maximum(client, np.minimum(one_hop, chain))
    ok &= np.isfinite(threshold)
    c1, c2, threshold = c1[ok], c2[ok], threshold[ok]
    if pipeline and c1.size:
        threshold = np.maximum(threshold, _pipeline_thresholds(p, c1, c2))
    return c1, c2, threshold


def _pipeline_thresholds(p: MultihopProblem, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """For each option ``(c1, c2)``: the least, over the micro-batch sizes, of the
    client's pipeline latency over its own stages, ``sum_s t_s(b) + (M - 1) max_s
    t_s(b)``.

    Its own stages (its device, and its link to one helper carrying both cuts, or for a
    chain its first and last links, at the client's best rate and least latency) serve
    its micro-batches one at a time and no other client's; between them the micro-batch
    passes helper stages taking at least ``a_min + b x`` each (``x``: the body's
    per-sample time on the fastest helper of each layer; for one helper, that helper's
    own time, which also counts in the largest stage). A flow shop of identical jobs
    lasts at least ``sum_s t_s + (M - 1) max_s t_s`` over any subset of its stages, and
    waiting for a shared helper only delays it, so every plan with this option lasts at
    least this long.
    """
    big_b = p.batch_size
    sizes = np.array(micro_batch_sizes(big_b), dtype=float)[None, :]
    m = np.ceil(big_b / sizes)
    cum_c = np.concatenate([[0.0], np.cumsum(p.sample_ms[0])])
    own = (cum_c[c1] + cum_c[-1] - cum_c[c2])[:, None]
    client = p.overhead_ms[0] + sizes * own
    act = np.concatenate([[0.0], p.activation_kib])
    a1, a2 = act[c1][:, None], act[c2][:, None]
    per_kib = 2.0 * KIB_TO_MS_AT_1MBIT
    helper_ms = np.where(p.runnable[1:], p.sample_ms[1:], np.inf)
    cum_h = np.concatenate([np.zeros((p.num_helpers, 1)), np.cumsum(helper_ms, axis=1)],
                           axis=1)
    best = np.full(c1.size, np.inf)
    for h in range(1, p.num_helpers + 1):
        if p.rate_mbps[0, h] <= 0:
            continue
        link = 4 * p.latency_ms[0, h] + sizes * per_kib * (a1 + a2) / p.link_rate_mbps[0, h]
        with np.errstate(invalid="ignore"):
            body = (cum_h[h - 1, c2] - cum_h[h - 1, c1])[:, None]
        helper = p.overhead_ms[h] + sizes * np.nan_to_num(body, nan=np.inf)
        total = client + link + helper + (m - 1) * np.maximum(np.maximum(client, link),
                                                              helper)
        best = np.minimum(best, total.min(axis=1))
    linked = p.rate_mbps[0, 1:] > 0
    if linked.sum() >= 2:
        rate = p.link_rate_mbps[0, 1:][linked].max()
        lat = p.latency_ms[0, 1:][linked].min()
        fastest = np.concatenate([[0.0], np.cumsum(helper_ms.min(axis=0))])
        body = (fastest[c2] - fastest[c1])[:, None]
        first = 2 * lat + sizes * per_kib * a1 / rate
        last = 2 * lat + sizes * per_kib * a2 / rate
        helpers = 2 * p.overhead_ms[1:].min() + sizes * body
        total = client + first + last + helpers + (m - 1) * np.maximum(
            np.maximum(client, first), last)
        best = np.minimum(best, np.where(c2 - c1 >= 2, total.min(axis=1), np.inf))
    return best


class _MemoryLoadLP:
    """The relaxation of :func:`memory_load_bound`, built once: variables ``Z`` (the
    largest helper busy time), ``lam[k, o]`` (client ``k`` takes head/tail option ``o``)
    and ``y[k, l, h]`` (share of client ``k``'s layer ``l`` on helper ``h``)."""

    def __init__(self, problem: ChainProblem) -> None:
        h_count = problem.num_helpers
        eq_rows: list[np.ndarray] = []
        eq_cols: list[np.ndarray] = []
        eq_vals: list[np.ndarray] = []
        time_cols: list[list[np.ndarray]] = [[] for _ in range(h_count)]
        time_vals: list[list[np.ndarray]] = [[] for _ in range(h_count)]
        mem_vals: list[list[np.ndarray]] = [[] for _ in range(h_count)]
        thresholds: list[np.ndarray] = []
        n_var, n_eq = 1, 0
        # rows after the 2 H helper rows: the route-end rows of _route_ends
        ub_rows: list[np.ndarray] = []
        ub_cols: list[np.ndarray] = []
        ub_vals: list[np.ndarray] = []
        n_ub = 2 * h_count
        #: variables allowed only at makespans of at least their threshold
        self.gated: list[tuple[int, float]] = []
        one_rows: list[int] = []
        self.lam_slices: list[tuple[int, np.ndarray]] = []
        # per client: its options (c1, c2) and, per body layer, the helpers and y columns
        self.options: list[tuple[np.ndarray, np.ndarray]] = []
        self.shares: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        self.feasible = True
        for p in problem.clients:
            c1, c2, threshold = option_thresholds(p, pipeline=True)
            if c1.size == 0:
                self.feasible = False
                return
            lam = np.arange(n_var, n_var + c1.size)
            self.lam_slices.append((n_var, threshold))
            self.options.append((c1, c2))
            self.shares.append({})
            n_var += c1.size
            thresholds.append(threshold)
            one_rows.append(n_eq)
            eq_rows.append(np.full(c1.size, n_eq))  # sum_o lam = 1
            eq_cols.append(lam)
            eq_vals.append(np.ones(c1.size))
            n_eq += 1
            for layer in range(int(c1.min()), int(c2.max())):
                cover = lam[(c1 <= layer) & (layer < c2)]
                helpers = np.flatnonzero(p.runnable[1:, layer])
                ys = np.arange(n_var, n_var + helpers.size)
                self.shares[-1][layer] = (helpers + 1, ys)
                n_var += helpers.size
                # sum_h y[k, l, h] = sum of lam over the options offloading layer l
                eq_rows.append(np.full(cover.size + ys.size, n_eq))
                eq_cols.append(np.concatenate([cover, ys]))
                eq_vals.append(np.r_[-np.ones(cover.size), np.ones(ys.size)])
                n_eq += 1
                for h, y in zip(helpers, ys, strict=True):
                    time_cols[h].append(np.array([y]))
                    time_vals[h].append(np.array([p.batch_size * p.sample_ms[h + 1, layer]]))
                    mem_vals[h].append(np.array([p.layer_memory_mib[layer]]))
            n_var, n_eq, n_ub = self._route_ends(p, lam, c1, c2, n_var, n_eq, n_ub,
                                                 (eq_rows, eq_cols, eq_vals),
                                                 (ub_rows, ub_cols, ub_vals))
        self.a_eq = sparse.csr_matrix(
            (np.concatenate(eq_vals), (np.concatenate(eq_rows), np.concatenate(eq_cols))),
            shape=(n_eq, n_var))
        self.b_eq = np.zeros(n_eq)
        self.b_eq[one_rows] = 1.0
        rows, cols, vals, b_ub = [], [], [], []
        for h in range(h_count):
            y = np.concatenate(time_cols[h]) if time_cols[h] else np.zeros(0, int)
            t = np.concatenate(time_vals[h]) if time_vals[h] else np.zeros(0)
            m = np.concatenate(mem_vals[h]) if mem_vals[h] else np.zeros(0)
            rows += [np.full(y.size + 1, 2 * h), np.full(y.size, 2 * h + 1)]
            cols += [np.r_[y, 0], y]
            vals += [np.r_[t, -1.0], m]  # busy - Z <= 0, memory <= capacity
            b_ub += [0.0, float(problem.helper_memory_mib[h])]
        rows += ub_rows
        cols += ub_cols
        vals += ub_vals
        b_ub += [0.0] * (n_ub - 2 * h_count)
        self.a_ub = sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n_ub, n_var))
        self.b_ub = np.array(b_ub)
        self.n_var = n_var
        gated = np.array([t for _, t in self.gated])
        self.gated_cols = np.array([v for v, _ in self.gated], dtype=int)
        self.gated_thresholds = gated
        self.thresholds = np.unique(np.concatenate([*thresholds, gated[np.isfinite(gated)]]))

    def _route_ends(self, p: MultihopProblem, lam: np.ndarray, c1: np.ndarray,
                    c2: np.ndarray, n_var: int, n_eq: int, n_ub: int,
                    eq: tuple[list, list, list], ub: tuple[list, list, list]
                    ) -> tuple[int, int, int]:
        """Rows and variables tying client ``p``'s body to its first and last helper.

        ``u[c, f]``: the route starts at cut ``c`` on helper ``f``; allowed at makespans of
        at least the link ``client - f``'s busy time for cut ``c`` (``2 latency + B x``
        its transfer time). ``sum_f u[c, f] = sum`` of ``lam`` over the options with
        ``c1 = c``. ``P[l, h] = sum_{c <= l, f <= h} u[c, f]`` (recursively over ``l``)
        bounds the share of layer ``l`` on helpers ``1 .. h``: ``sum_{h' <= h} y[l, h']
        <= P[l, h]``. Likewise ``w[c, g]`` (the route ends at cut ``c`` on helper ``g``)
        and ``Q[l, h] = sum_{c > l, g >= h} w[c, g]`` bound the share on helpers ``h ..
        H``.
        """
        eq_rows, eq_cols, eq_vals = eq
        ub_rows, ub_cols, ub_vals = ub
        h_count = p.num_helpers
        per_batch = 2.0 * KIB_TO_MS_AT_1MBIT * p.batch_size
        act = np.concatenate([[0.0], p.activation_kib])
        rate, lat = p.rate_mbps[0, 1:], p.latency_ms[0, 1:]
        first, last = int(c1.min()), int(c2.max())
        shares = self.shares[-1]

        def end_vars(cuts: np.ndarray) -> dict[int, np.ndarray]:
            # per cut value: one variable per helper (-1: no link), with the sum row
            nonlocal n_var, n_eq
            out = {}
            for c in np.unique(cuts):
                ids = np.full(h_count, -1)
                for h in range(h_count):
                    if rate[h] > 0:
                        ids[h] = n_var
                        self.gated.append((n_var, 2 * lat[h] + per_batch * act[c] / rate[h]))
                        n_var += 1
                linked = ids[ids >= 0]
                chosen = lam[cuts == c]
                eq_rows.append(np.full(chosen.size + linked.size, n_eq))
                eq_cols.append(np.concatenate([chosen, linked]))
                eq_vals.append(np.r_[np.ones(chosen.size), -np.ones(linked.size)])
                n_eq += 1
                out[int(c)] = ids
            return out

        def bound_rows(ends: dict[int, np.ndarray], layers: range, step: int,
                       below: bool) -> None:
            # running[h]: the variable holding the sum over the cuts passed so far
            nonlocal n_var, n_eq, n_ub
            running = None
            for layer in layers:
                cut = layer if step > 0 else layer + 1
                ids = ends.get(cut)
                here = np.arange(n_var, n_var + h_count)
                n_var += h_count
                for h in range(h_count):
                    side = (np.arange(h_count) <= h) if below else (np.arange(h_count) >= h)
                    new = ids[side & (ids >= 0)] if ids is not None else np.zeros(0, int)
                    prev = np.array([running[h]]) if running is not None else np.zeros(0, int)
                    # here[h] = prev[h] + sum of the new end variables on the side
                    eq_rows.append(np.full(1 + prev.size + new.size, n_eq))
                    eq_cols.append(np.concatenate([[here[h]], prev, new]))
                    eq_vals.append(np.r_[1.0, -np.ones(prev.size), -np.ones(new.size)])
                    n_eq += 1
                running = here
                if layer not in shares:
                    continue
                helpers, ys = shares[layer]
                for h in range(h_count - 1) if below else range(1, h_count):
                    side = (helpers - 1 <= h) if below else (helpers - 1 >= h)
                    sel = ys[side]
                    ub_rows.append(np.full(sel.size + 1, n_ub))
                    ub_cols.append(np.concatenate([sel, [here[h]]]))
                    ub_vals.append(np.r_[np.ones(sel.size), -1.0])
                    n_ub += 1

        bound_rows(end_vars(c1), range(first, last), 1, below=True)
        bound_rows(end_vars(c2), range(last - 1, first - 1, -1), -1, below=False)
        return n_var, n_eq, n_ub

    def solve(self, t: float) -> np.ndarray | None:
        """The LP's solution (``x[0] = Z``) with every client on options whose threshold
        is at most ``t``; ``None`` if infeasible."""
        upper = np.full(self.n_var, np.inf)
        for start, threshold in self.lam_slices:
            upper[start:start + threshold.size] = np.where(threshold <= t, np.inf, 0.0)
        upper[self.gated_cols] = np.where(self.gated_thresholds <= t, np.inf, 0.0)
        cost = np.zeros(self.n_var)
        cost[0] = 1.0
        res = linprog(cost, A_ub=self.a_ub, b_ub=self.b_ub, A_eq=self.a_eq, b_eq=self.b_eq,
                      bounds=np.column_stack([np.zeros(self.n_var), upper]), method="highs")
        return res.x if res.status == 0 else None

    def least_load(self, t: float) -> float:
        """``Z(t)``: the least largest helper busy time with every client on an option
        whose threshold is at most ``t`` (``inf`` if memory cannot hold the bodies)."""
        x = self.solve(t)
        return math.inf if x is None else float(x[0])


def earliest_helper_start(problem: ChainProblem) -> float:
    """The earliest time (ms) any helper task can start in any plan: a micro-batch (at
    least one sample) first passes its client's device (head and tail, ``a + c``) and
    the link to its first helper (``2 latency + c`` for one cut, the least over the
    client's links), least over the clients and their feasible head/tail options."""
    best = math.inf
    for p in problem.clients:
        c1, c2, ok, cum_c = _head_tail_grid(p)
        linked = np.flatnonzero(p.rate_mbps[0, 1:] > 0) + 1
        if not ok.any() or linked.size == 0:
            continue
        act = np.concatenate([[0.0], p.activation_kib])
        per_kib = 2.0 * KIB_TO_MS_AT_1MBIT
        link = np.min([2 * p.latency_ms[0, h] + per_kib * act / p.rate_mbps[0, h]
                       for h in linked], axis=0)  # [c1]: one sample across cut c1
        own = p.overhead_ms[0] + cum_c[c1] + cum_c[-1] - cum_c[c2]
        best = min(best, float((own + link[c1])[ok].min()))
    return 0.0 if math.isinf(best) else best


def memory_load_bound(problem: ChainProblem) -> float:
    """The memory-aware helper-load bound (ms): the least ``T`` with ``r + Z(T) <= T``.

    ``Z(T)`` is the optimum of a linear programme: every client ``k`` takes a convex
    combination ``lam[k, o]`` of its head/tail options ``o = (c1, c2)`` whose threshold
    (:func:`option_thresholds`: the least busy time of its own device and of its
    link(s) for that option) is at most ``T``; every layer of its body is spread over
    the helpers that can run it, ``sum_h y[k, l, h] = sum_{o: c1 <= l < c2} lam[k, o]``;
    every helper's memory holds its shares, ``sum_{k, l} y[k, l, h] mem_l <= mem_h``;
    and ``Z >= sum_{k, l} y[k, l, h] B t_{h, l}`` (``t``: per-sample time) for every
    helper. **Route ends**: ``u[k, c, f]`` (the route starts at cut ``c`` on helper
    ``f``) is allowed only if ``T`` is at least the link ``client - f``'s time for cut
    ``c`` (``2 latency + B x`` its per-sample transfer time), ``sum_f u[k, c, f] = sum``
    of ``lam[k, o]`` over the options with ``c1 = c``, and the share of layer ``l`` on
    helpers ``1 .. h`` is at most ``sum_{c <= l, f <= h} u[k, c, f]``; likewise
    ``w[k, c, g]`` for the last helper and cut ``c2``, bounding the share on helpers
    ``h .. H`` by ``sum_{c > l, g >= h} w[k, c, g]``. ``Z`` is minimised. ``r`` is
    :func:`earliest_helper_start`.

    **Why it is a lower bound.** Take any plan the judge accepts, with makespan ``T*``.
    Client ``k``'s route has some ``(c1, c2)``. Its own device runs ``M`` micro-batches
    of ``a + b c`` each, at least ``a + B c`` in total (``M b >= B``), within
    ``[0, T*]``; so do its links (one link carrying both cuts for one helper, two
    distinct links for a chain, at latency and rate no better than the client's best):
    the option's threshold is at most ``T*``. Setting ``lam`` to 1 on that option and
    ``y[k, l, h]`` to 1 where helper ``h`` runs layer ``l`` for ``k`` satisfies the
    coverage rows. Its first helper ``f`` receives every micro-batch across cut ``c1``
    over the link ``client - f`` (which carries at least that cut: ``M`` transfers of
    ``2 latency + b x``, at least ``2 latency + B x`` in all, within ``[0, T*]``), so
    ``u[k, c1, f] = 1`` is allowed; helpers run increasing ranges in route order, so
    layer ``l`` is on a helper ``<= h`` only if ``c1 <= l`` and ``f <= h``: the row
    holds; the last helper ``g`` and ``c2`` likewise. The judge refuses plans whose
    helper memory, summed over the clients a helper holds layers of, exceeds its
    capacity, and that sum is exactly the memory row; a helper runs ``M_k`` operations
    of ``a_h + b_k c`` for each client it serves, one at a time, so its busy time is at
    least ``sum y B t``; the busiest helper's busy time is thus at least ``Z(T*)``, and
    none of its operations starts before ``r``: ``r + Z(T*) <= T*``. ``Z`` is
    non-increasing in ``T`` (more variables allowed) and constant between consecutive
    thresholds (of the options and of the route ends), so the least ``T`` with ``r +
    Z(T) <= T`` is found by a bisection over the sorted thresholds ``t_1 < t_2 < ...``:
    it is ``max(t_i, r + Z(t_i))`` for the first ``i`` with ``r + Z(t_i) < t_{i + 1}``
    (a predicate that, once true, stays true); ``T*`` is at least that. The LP's value
    is shrunk by ``1e-6`` relative to absorb the solver's tolerances (in the direction
    that keeps the bound valid). Returns 0 when no option of some client is feasible or
    memory cannot hold the bodies at any ``T`` (then no plan exists and any value
    bounds it).
    """
    lp = _MemoryLoadLP(problem)
    if not lp.feasible:
        return 0.0
    release = earliest_helper_start(problem)
    ts = lp.thresholds
    loads: dict[int, float] = {}

    def load(i: int) -> float:
        if i not in loads:
            loads[i] = lp.least_load(float(ts[i])) * (1.0 - 1e-6)
        return loads[i]

    def settles(i: int) -> bool:
        return load(i) + release < (ts[i + 1] if i + 1 < ts.size else math.inf)

    lo, hi = 0, ts.size - 1
    if not math.isfinite(load(hi)):
        return 0.0
    while lo < hi:
        mid = (lo + hi) // 2
        if settles(mid):
            hi = mid
        else:
            lo = mid + 1
    return max(float(ts[lo]), load(lo) + release)


def lower_bound(problem: ChainProblem) -> ChainBound:
    """The lower bound on the optimal round makespan (ms) and its parts."""
    cache: dict[int, float] = {}
    standalone = []
    for p in problem.clients:
        key = hash((p.sample_ms[0].tobytes(), p.overhead_ms[0], p.memory_mib[0],
                    p.rate_mbps[0].tobytes(), p.latency_ms[0].tobytes(), p.batch_size,
                    p.byte_ratio.tobytes()))
        if key not in cache:
            cache[key] = standalone_latency(p)
        standalone.append(cache[key])
    memory_load = memory_load_bound(problem)
    load = max(load_bound(problem), memory_load)
    return ChainBound(max([load, *standalone]), standalone, load, memory_load)
