"""Lower bounds on the optimal makespan that need no exact solve.

- :func:`critical_path_bound`: every client needs all five stages on some helper it fits
  on, so ``max_k min_h sum_of_stages[k, h]``.
- :func:`load_bound`: for any subset of clients, the helpers together must do all their
  body work after the earliest of their stage-1 ends, and the last one still needs its
  stage 5: ``min release + total min body work / H + min tail``, maximised over subsets
  cut by release and tail thresholds (a parallel-machine Jackson bound).
- :func:`lower_bound`: the maximum of the above; the stronger assignment-relaxation bound
  lives in :mod:`flsplit.plan.scheduling.relaxation`.
"""

from __future__ import annotations

import numpy as np

from flsplit.plan.instance import Instance


def _masked_min(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed, values, np.inf).min(axis=1)


def critical_path_bound(instance: Instance) -> float:
    """Largest over clients of the shortest five-stage path over helpers it fits on."""
    fits = instance.memory_fits()
    return float(_masked_min(instance.critical_paths(), fits).max())


def load_bound(instance: Instance) -> float:
    """Parallel-machine bound over release/tail-threshold subsets of clients.

    For thresholds ``a`` (on the earliest possible stage-1 end ``r_k``) and ``b`` (on the
    shortest stage 5 ``q_k``), the clients with ``r_k >= a`` and ``q_k >= b`` need at least
    ``sum w_k`` helper time (``w_k`` = shortest body forward + backward), shared by at most
    ``H`` helpers, none of which can start them before ``a``, and the last of them ends at
    least ``b`` later. Runs in O(K^2).
    """
    fits = instance.memory_fits()
    release = _masked_min(instance.head_fwd_up, fits)
    work = _masked_min(instance.body_fwd + instance.body_bwd, fits)
    tail = _masked_min(instance.down_head_bwd, fits)
    helpers = instance.num_helpers
    r_order = np.argsort(release, kind="stable")
    q_sorted = np.sort(tail)
    # grid[i, j] = work of clients with release rank i and tail >= q_sorted[j]
    q_rank = np.searchsorted(q_sorted, tail, side="right") - 1
    num = instance.num_clients
    grid = np.zeros((num, num))
    grid[np.arange(num), q_rank[r_order]] = work[r_order]
    # suffix sums: clients with release rank >= i and tail rank >= j
    counts = np.zeros((num, num))
    counts[np.arange(num), q_rank[r_order]] = 1.0
    suffix, members = _suffix_sums(grid), _suffix_sums(counts)
    values = release[r_order][:, None] + q_sorted[None, :] + suffix / helpers
    return float(np.where(members > 0, values, -np.inf).max())


def _suffix_sums(grid: np.ndarray) -> np.ndarray:
    """``out[i, j] = grid[i:, j:].sum()``."""
    out = grid[::-1].cumsum(axis=0)[::-1]
    return out[:, ::-1].cumsum(axis=1)[:, ::-1]


def lower_bound(instance: Instance) -> float:
    """Best of the cheap bounds (critical path, load); O(K^2 + K H)."""
    return max(critical_path_bound(instance), load_bound(instance))
