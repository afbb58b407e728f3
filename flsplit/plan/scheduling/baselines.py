"""Literature baselines: helpers serve tasks first-come-first-served.

- ``random-fcfs``: each client goes to a uniformly random helper that still has memory
  for it.
- ``balanced-fcfs``: equal client counts per helper; clients (most critical first) take
  the least-loaded helper with room, ties broken by the shortest five-stage path.
"""

from __future__ import annotations

import time

import numpy as np

from flsplit.plan.instance import Instance
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.packing import PlanningError, pack
from flsplit.plan.scheduling.solution import Solution

FCFS = ("fcfs",)


def random_fcfs(instance: Instance, seed: int = 0) -> Plan:
    """Random feasible assignment, first-come-first-served helpers."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    free = instance.helper_memory.astype(float).copy()
    helper_of = [-1] * instance.num_clients
    try:
        for k in rng.permutation(instance.num_clients):
            room = np.flatnonzero(instance.body_memory[k] <= free + 1e-9)
            if room.size == 0:
                raise PlanningError("helper_memory", "random assignment ran out of memory")
            h = int(rng.choice(room))
            helper_of[int(k)] = h
            free[h] -= instance.body_memory[k]
    except PlanningError:
        helper_of = pack(instance, rng.random(instance.body_fwd.shape), seed=seed)
    solution = Solution(instance, helper_of, rules=FCFS)
    return solution.to_plan("random-fcfs", time.perf_counter() - start, None)


def balanced_fcfs(instance: Instance, seed: int = 0) -> Plan:
    """Equal client counts per helper, first-come-first-served helpers."""
    del seed  # deterministic
    start = time.perf_counter()
    paths = np.where(instance.memory_fits(), instance.critical_paths(), np.inf)
    counts = np.zeros(instance.num_helpers)
    free = instance.helper_memory.astype(float).copy()
    helper_of = [-1] * instance.num_clients
    try:
        for k in np.argsort(-paths.min(axis=1), kind="stable"):
            room = instance.body_memory[k] <= free + 1e-9
            if not room.any():
                raise PlanningError("helper_memory", "balanced assignment ran out of memory")
            key = np.where(room, counts, np.inf)
            fewest = np.flatnonzero(key == key.min())
            h = int(fewest[np.argmin(paths[k, fewest])])
            helper_of[int(k)] = h
            counts[h] += 1
            free[h] -= instance.body_memory[k]
    except PlanningError:
        helper_of = pack(instance, paths)
    solution = Solution(instance, helper_of, rules=FCFS)
    return solution.to_plan("balanced-fcfs", time.perf_counter() - start, None)
