"""Fast heuristic: link-aware greedy assignment, list scheduling and local search.

1. Construction: clients, most critical first (longest shortest five-stage path), each
   take the helper that minimises the helper's estimated finish after adding them. The
   estimate is the true list-scheduled finish on small instances and, on large ones, the
   maximum of the helper's longest client path and a load term (earliest release + body
   work + shortest tail).
2. Local search on the bottleneck helper: move one of its clients to another helper, or
   swap it with a client of another helper, whenever that lowers the bottleneck without
   creating a new one; helpers are re-sequenced with the priority rules of
   :mod:`flsplit.plan.scheduling.sequencing`. Random kicks restart the descent while time remains.
"""

from __future__ import annotations

import time

import numpy as np

from flsplit.plan.evaluator import StageTable
from flsplit.plan.instance import Instance
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.packing import pack
from flsplit.plan.scheduling.sequencing import best_list_schedule
from flsplit.plan.scheduling.solution import Solution

#: Above this many client-helper pairs the construction uses the cheap finish estimate.
EXACT_SCORING_PAIRS = 4000
#: Iterated local search stops after this many + this many per client useless kicks.
PATIENCE_BASE = 200
PATIENCE_PER_CLIENT = 20


def construct(instance: Instance) -> list[int]:
    """Greedy link-aware assignment; returns the helper index of each client."""
    num_helpers = instance.num_helpers
    fits = instance.memory_fits()
    paths = np.where(fits, instance.critical_paths(), np.inf)
    work = instance.body_fwd + instance.body_bwd
    release, tail = instance.head_fwd_up, instance.down_head_bwd
    free = instance.helper_memory.astype(float).copy()
    longest = np.zeros(num_helpers)
    load = np.zeros(num_helpers)
    first_release = np.full(num_helpers, np.inf)
    last_tail = np.full(num_helpers, np.inf)
    exact = instance.num_clients * num_helpers <= EXACT_SCORING_PAIRS
    table = StageTable(instance) if exact else None
    members: list[set[int]] = [set() for _ in range(num_helpers)]
    helper_of = [-1] * instance.num_clients
    for k in np.argsort(-paths.min(axis=1), kind="stable"):
        room = instance.body_memory[k] <= free + 1e-9
        if not room.any():
            return pack(instance, paths)
        if table is not None:
            estimate = np.full(num_helpers, np.inf)
            for h in np.flatnonzero(room):
                clients = sorted(members[h] | {int(k)})
                estimate[h] = best_list_schedule(table, int(h), clients, ("tail",))[0]
        else:
            load_term = (
                np.minimum(first_release, release[k]) + load + work[k]
                + np.minimum(last_tail, tail[k])
            )
            estimate = np.maximum(np.maximum(longest, paths[k]), load_term)
            estimate = np.where(room, estimate, np.inf)
        best = np.flatnonzero(estimate <= estimate.min() * (1 + 1e-12))
        h = int(best[np.argmin(paths[k, best])])
        helper_of[int(k)] = h
        members[h].add(int(k))
        free[h] -= instance.body_memory[k]
        longest[h] = max(longest[h], paths[k, h])
        load[h] += work[k, h]
        first_release[h] = min(first_release[h], release[k, h])
        last_tail[h] = min(last_tail[h], tail[k, h])
    return helper_of


class LocalSearch:
    """Bottleneck-driven move/swap descent with random kicks.

    Parameters
    ----------
    solution
        Solution to improve in place.
    rng
        Random generator for kicks.
    candidate_helpers
        How many helpers (shortest paths first) each client may move to.
    """

    def __init__(
        self, solution: Solution, rng: np.random.Generator, candidate_helpers: int = 12
    ) -> None:
        self.solution = solution
        self.rng = rng
        instance = solution.instance
        paths = np.where(instance.memory_fits(), instance.critical_paths(), np.inf)
        self.paths = paths
        limit = min(candidate_helpers, instance.num_helpers)
        self.candidates = np.argsort(paths, axis=1, kind="stable")[:, :limit].tolist()

    def _best_move(self, bottleneck: int, target: float, deadline: float) -> bool:
        sol = self.solution
        best: tuple[float, int, int] | None = None
        for k in sorted(sol.members[bottleneck], key=lambda c: -self.paths[c, bottleneck]):
            donor = sol.sequence(bottleneck, sol.members[bottleneck] - {k})[0]
            if donor >= target:
                continue
            for h in self.candidates[k]:
                if h == bottleneck or self.paths[k, h] >= target or not sol.fits(k, h):
                    continue
                receiver = sol.sequence(h, sol.members[h] | {k})[0]
                value = max(donor, receiver)
                if value < target and (best is None or value < best[0]):
                    best = (value, k, h)
            if time.perf_counter() > deadline:
                break
        if best is None:
            return False
        sol.move(best[1], best[2])
        return True

    def _best_swap(self, bottleneck: int, target: float, deadline: float) -> bool:
        sol = self.solution
        memory = sol.instance.body_memory
        capacity = sol.instance.helper_memory
        for k in sorted(sol.members[bottleneck], key=lambda c: -self.paths[c, bottleneck]):
            for h in self.candidates[k]:
                if h == bottleneck or self.paths[k, h] >= target:
                    continue
                for other in sorted(sol.members[h]):
                    if self.paths[other, bottleneck] >= target:
                        continue
                    delta = memory[k] - memory[other]
                    if (sol.memory_used[h] + delta > capacity[h] + 1e-9
                            or sol.memory_used[bottleneck] - delta
                            > capacity[bottleneck] + 1e-9):
                        continue
                    donor = sol.sequence(bottleneck, sol.members[bottleneck] - {k} | {other})[0]
                    if donor >= target:
                        continue
                    receiver = sol.sequence(h, sol.members[h] - {other} | {k})[0]
                    if receiver < target:
                        sol.move(k, h)
                        sol.move(other, bottleneck)
                        return True
                if time.perf_counter() > deadline:
                    return False
        return False

    def descend(self, deadline: float) -> None:
        """Improve until no move or swap lowers the bottleneck, or until ``deadline``."""
        sol = self.solution
        while time.perf_counter() < deadline:
            bottleneck = int(np.argmax(sol.finish))
            target = sol.finish[bottleneck] - 1e-9
            if self._best_move(bottleneck, target, deadline):
                continue
            if not self._best_swap(bottleneck, target, deadline):
                return

    def kick(self, strength: int) -> None:
        """Move ``strength`` random clients of the bottleneck helper to random helpers."""
        sol = self.solution
        bottleneck = int(np.argmax(sol.finish))
        members = sorted(sol.members[bottleneck])
        for k in self.rng.permutation(members)[:strength]:
            options = [h for h in self.candidates[int(k)] if h != bottleneck
                       and sol.fits(int(k), h)]
            if options:
                sol.move(int(k), int(self.rng.choice(options)))

    def patience(self) -> int:
        """Consecutive non-improving kicks after which the search gives up."""
        return PATIENCE_BASE + PATIENCE_PER_CLIENT * self.solution.instance.num_clients

    def run(self, deadline: float, stop_at: float = 0.0) -> None:
        """Iterated local search until ``deadline``, until makespan <= ``stop_at`` or
        until :meth:`patience` kicks in a row brought nothing."""
        sol = self.solution
        self.descend(deadline)
        best_state, best_value = sol.copy_state(), sol.makespan
        idle = 0
        while (time.perf_counter() < deadline and best_value > stop_at * (1 + 1e-9)
               and idle < self.patience()):
            self.kick(int(self.rng.integers(1, 4)))
            self.descend(deadline)
            if sol.makespan < best_value - 1e-9:
                best_state, best_value, idle = sol.copy_state(), sol.makespan, 0
            else:
                sol.restore(best_state)
                idle += 1
        sol.restore(best_state)


def greedy(
    instance: Instance, time_limit: float = 1.0, seed: int = 0, bound: float | None = None
) -> Plan:
    """Greedy construction plus local search within ``time_limit`` seconds."""
    start = time.perf_counter()
    if bound is None:
        bound = lower_bound(instance)
    solution = Solution(instance, construct(instance))
    search = LocalSearch(solution, np.random.default_rng(seed))
    search.run(start + time_limit, stop_at=bound)
    return solution.to_plan("greedy", time.perf_counter() - start, bound)
