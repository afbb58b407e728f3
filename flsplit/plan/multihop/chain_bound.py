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
  when each client's first micro-batch can reach a helper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flsplit.plan.multihop.chain_problem import ChainProblem
from flsplit.plan.multihop.placement import place
from flsplit.plan.multihop.problem import MultihopError, MultihopProblem


@dataclass
class ChainBound:
    """The bound (ms) and its parts: ``standalone[k]`` per client and ``load``."""

    value: float
    standalone: list[float]
    load: float


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


def lower_bound(problem: ChainProblem) -> ChainBound:
    """The lower bound on the optimal round makespan (ms) and its parts."""
    cache: dict[int, float] = {}
    standalone = []
    for p in problem.clients:
        key = hash((p.sample_ms[0].tobytes(), p.overhead_ms[0], p.memory_mib[0],
                    p.rate_mbps[0].tobytes(), p.latency_ms[0].tobytes(), p.batch_size))
        if key not in cache:
            cache[key] = standalone_latency(p)
        standalone.append(cache[key])
    load = load_bound(problem)
    return ChainBound(max([load, *standalone]), standalone, load)
