"""Assignment-relaxation lower bound (energetic reasoning + CP-SAT feasibility).

For a candidate makespan ``T`` every client must go to a helper it fits on with
``sum of stages <= T``. On helper ``h`` its forward then lies in the window
``[r, T - c3 - p4 - c5]`` and its backward in ``[r + p2 + c3, T - c5]`` (``r`` = stage 1,
``p2``/``p4`` = body forward/backward, ``c3``/``c5`` = stages 3/5). For any interval
``[a, b]`` the work that every assigned client *must* do inside it (its mandatory
left-/right-shift overlap) cannot exceed ``b - a``. Assignments are left to CP-SAT, with
memory capacities; if it proves no assignment satisfies all the interval constraints,
no plan reaches ``T``, so ``T`` is a lower bound. A bisection on ``T`` between the cheap
bound and a known makespan gives the bound.

Coefficients are floored and right-hand sides ceiled when converted to integers, and
intervals are only ever dropped, so the integer model remains a relaxation.
"""

from __future__ import annotations

import math
import time

import numpy as np
from ortools.sat.python import cp_model

from flsplit.plan.cpsat import make_solver
from flsplit.plan.instance import Instance
from flsplit.plan.scheduling.bounds import lower_bound

#: Integer resolution of ``T`` in the feasibility model.
TICKS = 100_000
#: Interval constraints per helper in the first model (the most overloaded ones).
INITIAL_INTERVALS = 60
#: Interval constraints per helper added after each assignment CP-SAT finds.
CUT_INTERVALS = 16


def _mandatory(est: np.ndarray, lct: np.ndarray, proc: np.ndarray,
               a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minimal overlap of each operation with each interval: shape (ops, len(a), len(b))."""
    est, lct, proc = est[:, None, None], lct[:, None, None], proc[:, None, None]
    lo, hi = a[None, :, None], b[None, None, :]
    left = np.minimum(hi, est + proc) - np.maximum(lo, est)
    right = np.minimum(hi, lct) - np.maximum(lo, lct - proc)
    return np.clip(np.minimum(left, right), 0.0, None)


class _HelperWindows:
    """Time windows of the clients allowed on one helper for a target makespan."""

    def __init__(self, instance: Instance, helper: int, clients: np.ndarray,
                 target: float) -> None:
        h = helper
        self.clients = clients
        r = instance.head_fwd_up[clients, h]
        self.fwd_p, delay = instance.body_fwd[clients, h], instance.tail_fwd_bwd[clients, h]
        self.bwd_p, tail = instance.body_bwd[clients, h], instance.down_head_bwd[clients, h]
        self.fwd_est, self.fwd_lct = r, target - tail - self.bwd_p - delay
        self.bwd_est, self.bwd_lct = r + self.fwd_p + delay, target - tail

    def energy(self, members: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Mandatory work of ``members`` (positions) in every ``[start, end]``."""
        m = members
        return (_mandatory(self.fwd_est[m], self.fwd_lct[m], self.fwd_p[m], starts, ends)
                + _mandatory(self.bwd_est[m], self.bwd_lct[m], self.bwd_p[m], starts, ends))

    def intervals(self, members: np.ndarray, count: int) -> list[tuple[np.ndarray, float]]:
        """Up to ``count`` intervals overloaded by ``members``, as constraints on all clients.

        Half are the most overloaded in absolute terms, half relative to their length.
        Each constraint is ``(mandatory work of every allowed client, interval length)``.
        """
        if members.size == 0:
            return []
        starts = np.unique(np.concatenate([self.fwd_est[members], self.bwd_est[members]]))
        ends = np.unique(np.concatenate([self.fwd_lct[members], self.bwd_lct[members]]))
        total = self.energy(members, starts, ends).sum(axis=0)
        length = ends[None, :] - starts[:, None]
        excess = np.where(length > 0, total - length, -np.inf).ravel()
        flat = np.flatnonzero(excess > 1e-9)
        if flat.size == 0:
            return []
        ratio = total.ravel()[flat] / np.maximum(length.ravel()[flat], 1e-9)
        half = max(1, count // 2)
        keep = np.unique(np.concatenate([
            flat[np.argsort(-excess[flat], kind="stable")[:half]],
            flat[np.argsort(-ratio, kind="stable")[:half]],
        ]))
        rows, cols = np.unravel_index(keep, length.shape)
        everyone = np.arange(self.clients.size)
        out = []
        for i, j in zip(rows, cols, strict=True):
            coefficients = self.energy(everyone, starts[i : i + 1], ends[j : j + 1])[:, 0, 0]
            out.append((coefficients, float(length[i, j])))
        return out


def refutes(instance: Instance, target: float, time_limit: float, workers: int = 2) -> bool:
    """Return True if CP-SAT proves that no plan has makespan ``<= target``.

    Interval constraints are generated lazily: an initial set from all allowed clients,
    then, while CP-SAT finds assignments, the intervals those assignments overload.
    """
    deadline = time.perf_counter() + time_limit
    fits = instance.memory_fits()
    allowed = fits & (instance.critical_paths() <= target + 1e-9)
    if not allowed.any(axis=1).all():
        return True
    scale = TICKS / max(target, 1e-9)
    model = cp_model.CpModel()
    chosen: dict[tuple[int, int], cp_model.IntVar] = {}
    for k, h in zip(*np.nonzero(allowed), strict=True):
        chosen[int(k), int(h)] = model.NewBoolVar(f"x{k}_{h}")
    for k in range(instance.num_clients):
        model.AddExactlyOne(chosen[k, h] for h in np.flatnonzero(allowed[k]))
    windows: dict[int, _HelperWindows] = {}
    for h in range(instance.num_helpers):
        clients = np.flatnonzero(allowed[:, h])
        if clients.size == 0:
            continue
        windows[h] = _HelperWindows(instance, h, clients, target)
        need = instance.body_memory[clients]
        if need.sum() > instance.helper_memory[h] + 1e-9:
            unit = TICKS / max(float(instance.helper_memory[h]), 1e-9)
            model.Add(sum(math.floor(need[i] * unit) * chosen[int(k), h]
                          for i, k in enumerate(clients))
                      <= math.ceil(instance.helper_memory[h] * unit))

    def add(h: int, constraints: list[tuple[np.ndarray, float]]) -> int:
        added = 0
        for coefficients, length in constraints:
            terms = [(math.floor(c * scale), chosen[int(k), h])
                     for c, k in zip(coefficients, windows[h].clients, strict=True)
                     if c * scale >= 1]
            if terms:
                model.Add(sum(c * x for c, x in terms) <= math.ceil(length * scale))
                added += 1
        return added

    for h, window in windows.items():
        add(h, window.intervals(np.arange(window.clients.size), INITIAL_INTERVALS))
    solver = make_solver(time_limit, workers=workers)
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return False
        solver.parameters.max_time_in_seconds = remaining
        status = solver.Solve(model)
        if status == cp_model.INFEASIBLE:
            return True
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return False
        added = 0
        for h, window in windows.items():
            members = np.flatnonzero([solver.Value(chosen[int(k), h])
                                      for k in window.clients])
            added += add(h, window.intervals(members, CUT_INTERVALS))
        if added == 0:
            return False


def relaxation_bound(
    instance: Instance,
    upper: float,
    time_limit: float = 10.0,
    lower: float | None = None,
    tolerance: float = 0.002,
) -> float:
    """Bisect ``T`` in ``[lower, upper]`` with :func:`refutes`; return the best proven bound.

    Parameters
    ----------
    instance
        The instance.
    upper
        Makespan of a known plan (the bound cannot exceed it).
    time_limit
        Total seconds for all feasibility checks.
    lower
        A known lower bound (default :func:`flsplit.plan.scheduling.bounds.lower_bound`).
    tolerance
        Stop when ``(high - low) / high`` falls below this.
    """
    deadline = time.perf_counter() + time_limit
    low = lower_bound(instance) if lower is None else lower
    high = upper
    steps = max(1, math.ceil(math.log2(max(2.0, (high - low) / max(tolerance * high, 1e-9)))))
    while high - low > tolerance * high and time.perf_counter() < deadline:
        remaining = deadline - time.perf_counter()
        target = 0.5 * (low + high)
        if refutes(instance, target, min(remaining, max(0.2, 2 * remaining / steps))):
            low = target
        else:
            high = target
    return low
