"""Index-based working solution shared by the solvers, and its conversion to a Plan."""

from __future__ import annotations

import numpy as np

from flsplit.plan.evaluator import IndexTask, StageTable, evaluated
from flsplit.plan.instance import Instance
from flsplit.plan.plan import BWD, FWD, Plan
from flsplit.plan.scheduling.packing import PlanningError
from flsplit.plan.scheduling.sequencing import RULES, best_list_schedule

__all__ = ["PlanningError", "Solution", "to_plan"]


class Solution:
    """Assignment plus per-helper orders, with cached per-helper sequencing.

    Parameters
    ----------
    instance
        The instance.
    helper_of
        Helper index per client.
    rules
        Priority rules tried when (re)sequencing a helper.
    """

    def __init__(
        self, instance: Instance, helper_of: list[int], rules: tuple[str, ...] = RULES
    ) -> None:
        self.instance = instance
        self.table = StageTable(instance)
        self.rules = rules
        self.helper_of = list(helper_of)
        self.members: list[set[int]] = [set() for _ in range(instance.num_helpers)]
        for k, h in enumerate(self.helper_of):
            self.members[h].add(k)
        self.memory_used = np.zeros(instance.num_helpers)
        np.add.at(self.memory_used, np.asarray(self.helper_of), instance.body_memory)
        self._cache: dict[tuple[int, frozenset[int]], tuple[float, list[IndexTask]]] = {}
        self.finish = [0.0] * instance.num_helpers
        self.orders: list[list[IndexTask]] = [[] for _ in range(instance.num_helpers)]
        for h in range(instance.num_helpers):
            self.finish[h], self.orders[h] = self.sequence(h, self.members[h])

    def sequence(self, helper: int, clients: set[int] | frozenset[int]) -> tuple[float, list]:
        """Return the cached best heuristic ``(finish, order)`` of ``clients`` on ``helper``."""
        key = (helper, frozenset(clients))
        hit = self._cache.get(key)
        if hit is None:
            hit = best_list_schedule(self.table, helper, sorted(clients), self.rules)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    @property
    def makespan(self) -> float:
        """Largest helper finish under the current orders."""
        return max(self.finish)

    def fits(self, client: int, helper: int) -> bool:
        """Whether ``client`` can move to ``helper`` without exceeding its memory."""
        need = self.instance.body_memory[client]
        return bool(self.memory_used[helper] + need <= self.instance.helper_memory[helper] + 1e-9)

    def move(self, client: int, helper: int) -> None:
        """Reassign ``client`` to ``helper`` and resequence both helpers."""
        old = self.helper_of[client]
        if old == helper:
            return
        need = self.instance.body_memory[client]
        self.members[old].discard(client)
        self.members[helper].add(client)
        self.memory_used[old] -= need
        self.memory_used[helper] += need
        self.helper_of[client] = helper
        for h in (old, helper):
            self.finish[h], self.orders[h] = self.sequence(h, self.members[h])

    def set_order(self, helper: int, order: list[IndexTask], finish: float) -> None:
        """Install an externally optimised order for ``helper``."""
        self.orders[helper] = list(order)
        self.finish[helper] = finish
        self._cache[(helper, frozenset(self.members[helper]))] = (finish, list(order))

    def copy_state(self) -> tuple[list[int], list[list[IndexTask]], list[float]]:
        """Snapshot enough state to restore later with :meth:`restore`."""
        return list(self.helper_of), [list(o) for o in self.orders], list(self.finish)

    def restore(self, state: tuple[list[int], list[list[IndexTask]], list[float]]) -> None:
        """Restore a snapshot taken by :meth:`copy_state`."""
        helper_of, orders, finish = state
        self.helper_of = list(helper_of)
        self.members = [set() for _ in range(self.instance.num_helpers)]
        for k, h in enumerate(self.helper_of):
            self.members[h].add(k)
        self.memory_used = np.zeros(self.instance.num_helpers)
        np.add.at(self.memory_used, np.asarray(self.helper_of), self.instance.body_memory)
        self.orders = [list(o) for o in orders]
        self.finish = list(finish)

    def to_plan(self, method: str, solve_time: float, lower_bound: float | None) -> Plan:
        """Convert to a :class:`Plan` whose makespan comes from the evaluator."""
        return to_plan(self.instance, self.helper_of, self.orders, method, solve_time,
                       lower_bound)


def to_plan(
    instance: Instance,
    helper_of: list[int],
    orders: list[list[IndexTask]],
    method: str,
    solve_time: float,
    lower_bound: float | None,
) -> Plan:
    """Build an evaluated :class:`Plan` from index-based assignment and orders."""
    clients, helpers = instance.client_ids, instance.helper_ids
    plan = Plan(
        assignment={clients[k]: helpers[h] for k, h in enumerate(helper_of)},
        order={
            helpers[h]: [(clients[k], BWD if is_bwd else FWD) for k, is_bwd in orders[h]]
            for h in range(len(helpers))
        },
        lower_bound=lower_bound,
        solve_time=solve_time,
        method=method,
    )
    return evaluated(instance, plan)

