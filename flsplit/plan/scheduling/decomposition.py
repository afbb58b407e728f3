"""Decomposition: assignment and per-helper sequencing solved alternately.

The master level searches assignments (greedy construction, bottleneck moves and swaps,
random kicks) scoring helpers with fast list scheduling; the sub-level orders the tasks
of the critical helpers exactly with a one-machine CP-SAT model
(:func:`flsplit.plan.scheduling.exact.sequence_exact`). Exact orders are cached per client set and
fed back into the master's scores, so the two levels improve each other until the time
limit.
"""

from __future__ import annotations

import time

import numpy as np

from flsplit.plan.instance import Instance
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.greedy import LocalSearch, construct
from flsplit.plan.scheduling.sequencing_exact import sequence_exact
from flsplit.plan.scheduling.solution import Solution

#: Helpers within this fraction of the makespan get their order optimised exactly.
CRITICAL_FRACTION = 0.995
#: Kicked assignments within this factor of the best get exact orders too.
PROMISING = 1.01
#: A kicked solution replaces the current one if at most this much worse (walk).
ACCEPT_WORSE = 0.003


def _sequence_critical(
    solution: Solution, done: set, deadline: float, seed: int, slice_s: float
) -> bool:
    """Exactly re-sequence the helpers close to the makespan; return True if any changed."""
    changed = False
    threshold = solution.makespan * CRITICAL_FRACTION
    critical = sorted(range(len(solution.finish)), key=lambda h: -solution.finish[h])
    for h in critical:
        if solution.finish[h] < threshold or time.perf_counter() >= deadline:
            break
        key = (h, frozenset(solution.members[h]))
        if key in done:
            continue
        done.add(key)
        budget = min(slice_s, deadline - time.perf_counter())
        finish, order, _ = sequence_exact(solution.table, h, sorted(solution.members[h]),
                                          budget, hint=solution.orders[h], seed=seed)
        if finish < solution.finish[h] - 1e-9:
            solution.set_order(h, order, finish)
            changed = True
    return changed


def decomposition(
    instance: Instance,
    time_limit: float = 2.0,
    seed: int = 0,
    bound: float | None = None,
    slice_s: float = 0.3,
) -> Plan:
    """Alternate assignment search and exact per-helper sequencing for ``time_limit`` s."""
    start = time.perf_counter()
    deadline = start + time_limit
    if bound is None:
        bound = lower_bound(instance)
    solution = Solution(instance, construct(instance))
    search = LocalSearch(solution, np.random.default_rng(seed))
    search.descend(start + 0.5 * time_limit)
    done: set = set()
    _sequence_critical(solution, done, deadline, seed, slice_s)
    search.descend(deadline)
    best_state, best_value = solution.copy_state(), solution.makespan
    current_state, current_value = best_state, best_value
    idle = 0
    while (time.perf_counter() < deadline and best_value > bound * (1 + 1e-9)
           and idle < search.patience()):
        search.kick(int(search.rng.integers(1, 4)))
        search.descend(deadline)
        # exact orders only for promising assignments, then let the master react
        if solution.makespan <= best_value * PROMISING:
            _sequence_critical(solution, done, deadline, seed, slice_s)
            search.descend(deadline)
        value = solution.makespan
        if value < best_value - 1e-9:
            best_state, best_value, idle = solution.copy_state(), value, 0
            current_state, current_value = best_state, value
            continue
        idle += 1
        if value <= current_value * (1 + ACCEPT_WORSE):
            current_state, current_value = solution.copy_state(), value
        else:
            solution.restore(current_state)
    solution.restore(best_state)
    return solution.to_plan("decomposition", time.perf_counter() - start, bound)
