"""Memory packing: put every client's body on a helper without exceeding any capacity.

Solvers build assignments for speed; when theirs does not fit memory they fall back to
:func:`pack`, which finds a packing whenever one exists:

1. the caller's preference (largest body first to its most preferred helper with room),
2. best-fit decreasing (largest body first to the helper it leaves with least room),
3. first-fit decreasing (largest helper first) and worst-fit decreasing,
4. OR-Tools CP-SAT on the bin-packing model with the helpers' capacities, time-limited.

CP-SAT either returns a packing, proves that none exists, or runs out of time; the
:class:`PackingError` says which (``proven``).
"""

from __future__ import annotations

import math

import numpy as np
from ortools.sat.python import cp_model

from flsplit.plan.cpsat import MEMORY_TICKS, make_solver
from flsplit.plan.instance import Instance, InstanceError

#: Default seconds CP-SAT may spend deciding whether a packing exists.
PACKING_TIME_LIMIT = 5.0
#: Tolerance of memory comparisons (MiB), as in :meth:`Instance.memory_fits`.
EPS = 1e-9


class PlanningError(InstanceError):
    """The solver could not build a feasible plan (e.g. memory cannot be packed)."""


class PackingError(PlanningError):
    """No packing of the bodies into the helpers' memory was found.

    Attributes
    ----------
    proven : bool
        ``True`` when CP-SAT proved that no packing exists (every method must fail);
        ``False`` when it ran out of time.
    """

    def __init__(self, message: str, proven: bool) -> None:
        super().__init__("helper_memory", message)
        self.proven = proven


def fits(body_memory: np.ndarray, helper_memory: np.ndarray, helper_of: list[int]) -> bool:
    """Whether the assignment ``helper_of`` keeps every helper within its capacity."""
    used = np.zeros(len(helper_memory))
    np.add.at(used, np.asarray(helper_of, dtype=int), body_memory)
    return bool(np.all(used <= helper_memory + EPS))


def _greedy(body: np.ndarray, capacity: np.ndarray, pick: str,
            preference: np.ndarray | None = None) -> list[int] | None:
    """Largest body first; ``pick`` chooses among the helpers with room."""
    free = capacity.astype(float).copy()
    helper_of = [-1] * len(body)
    by_size = np.argsort(-capacity, kind="stable")
    for k in np.argsort(-body, kind="stable"):
        room = np.flatnonzero(body[k] <= free + EPS)
        if room.size == 0:
            return None
        if pick == "preference" and preference is not None:
            h = int(room[np.argmin(preference[k, room])])
        elif pick == "best":
            h = int(room[np.argmin(free[room])])
        elif pick == "worst":
            h = int(room[np.argmax(free[room])])
        else:  # first fit, largest helper first
            h = int(next(j for j in by_size if j in set(room.tolist())))
        helper_of[int(k)] = h
        free[h] -= body[k]
    return helper_of


def _cpsat(body: np.ndarray, capacity: np.ndarray, time_limit: float, seed: int,
           relaxed: bool) -> tuple[list[int] | None, int]:
    """CP-SAT bin packing in integer ticks; ``relaxed`` floors needs and ceils capacities
    (an infeasible answer then proves no real packing), else the reverse (every answer is
    a real packing)."""
    unit = MEMORY_TICKS / max(float(capacity.max()), EPS)
    down, up = (math.floor, math.ceil) if relaxed else (math.ceil, math.floor)
    need = [int(down(b * unit)) for b in body]
    cap = [int(up(c * unit)) for c in capacity]
    model = cp_model.CpModel()
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    for k in range(len(body)):
        options = []
        for h in range(len(capacity)):
            if need[k] <= cap[h]:
                x[k, h] = model.NewBoolVar(f"x{k}_{h}")
                options.append(x[k, h])
        if not options:
            return None, cp_model.INFEASIBLE
        model.AddExactlyOne(options)
    for h in range(len(capacity)):
        users = [(k, var) for (k, j), var in x.items() if j == h]
        if users:
            model.Add(sum(need[k] * var for k, var in users) <= cap[h])
    solver = make_solver(time_limit, seed)
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, status
    helper_of = [next(h for h in range(len(capacity)) if (k, h) in x and solver.Value(x[k, h]))
                 for k in range(len(body))]
    return helper_of, status


def summary(body: np.ndarray, capacity: np.ndarray) -> str:
    """Total need vs capacity and largest body vs largest helper, for error messages."""
    return (f"{len(body)} bodies need {body.sum():g} MiB in total, the {len(capacity)} "
            f"helpers hold {capacity.sum():g} MiB; the largest body needs {body.max():g} "
            f"MiB, the largest helper holds {capacity.max():g} MiB")


def pack_memory(body_memory: np.ndarray, helper_memory: np.ndarray,
                preference: np.ndarray | None = None,
                time_limit: float = PACKING_TIME_LIMIT, seed: int = 0) -> list[int]:
    """A helper index per body such that every helper's bodies fit its memory.

    Parameters
    ----------
    body_memory, helper_memory
        Needs (length ``K``) and capacities (length ``H``), same unit.
    preference
        Optional ``K x H`` lower-is-better scores tried first (keeps good assignments).
    time_limit
        Seconds CP-SAT may use when the greedy packers fail.
    seed
        CP-SAT seed.

    Raises
    ------
    PackingError
        If no packing was found; ``proven`` tells whether none exists.
    """
    body = np.asarray(body_memory, dtype=float)
    capacity = np.asarray(helper_memory, dtype=float)
    picks = (["preference"] if preference is not None else []) + ["best", "first", "worst"]
    for pick in picks:
        helper_of = _greedy(body, capacity, pick, preference)
        if helper_of is not None:
            return helper_of
    if body.max() > capacity.max() + EPS or body.sum() > capacity.sum() + EPS:
        raise PackingError(f"no packing exists: {summary(body, capacity)}", proven=True)
    helper_of, status = _cpsat(body, capacity, time_limit, seed, relaxed=True)
    if status == cp_model.INFEASIBLE:
        raise PackingError(
            f"no packing exists (CP-SAT proved it): {summary(body, capacity)}", proven=True)
    if helper_of is not None and fits(body, capacity, helper_of):
        return helper_of
    if helper_of is not None:  # rounding of the relaxed model; try the strict one
        strict, _ = _cpsat(body, capacity, time_limit, seed, relaxed=False)
        if strict is not None:
            return strict
        raise PackingError(
            "no packing found: it only exists within the memory rounding of "
            f"1/{MEMORY_TICKS} of the largest helper ({summary(body, capacity)})",
            proven=False)
    raise PackingError(
        f"no packing found: CP-SAT timed out after {time_limit:g} s without deciding "
        f"whether one exists ({summary(body, capacity)})", proven=False)


def pack(instance: Instance, preference: np.ndarray | None = None,
         time_limit: float = PACKING_TIME_LIMIT, seed: int = 0) -> list[int]:
    """:func:`pack_memory` for an instance's bodies and helpers."""
    return pack_memory(instance.body_memory, instance.helper_memory, preference,
                       time_limit, seed)


def packable_clients(body_memory: np.ndarray, helper_memory: np.ndarray,
                     time_limit: float = PACKING_TIME_LIMIT) -> list[int]:
    """Indices of the clients kept when not all bodies can be packed.

    Drops the largest bodies first, one at a time, until the rest pack (for equal
    bodies this keeps as many clients as possible). Returns all indices when everything
    packs and an empty list when not even the smallest body fits.
    """
    body = np.asarray(body_memory, dtype=float)
    kept = [int(k) for k in np.argsort(body, kind="stable")]  # smallest first
    while kept:
        try:
            pack_memory(body[kept], helper_memory, time_limit=time_limit)
            return sorted(kept)
        except PackingError:
            kept.pop()
    return []
