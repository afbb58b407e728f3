"""Re-picking cuts for a fixed assignment and order, and the search state it works on.

:func:`repick` gives every client the cut pair that lets its helper finish earliest,
given the helper and the helper's order, judged by the evaluator's recursion; the joint
methods alternate it with re-solving the schedule, and :func:`repick_plan` applies one
pass to a finished plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from flsplit.plan.cuts.plan import CutPlan, cut_plan, index_solution, plan_from_indices
from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.evaluator import IndexTask, StageTable, helper_finish
from flsplit.plan.instance import STAGE_NAMES
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.sequencing import best_list_schedule


@dataclass
class CutState:
    """Per-client cut choice plus assignment and orders, with its evaluated makespan."""

    choice: np.ndarray
    helper_of: list[int]
    orders: list[list[IndexTask]]
    makespan: float

    def copy(self) -> CutState:
        """An independent copy (arrays and lists copied)."""
        return CutState(self.choice.copy(), list(self.helper_of),
                      [list(o) for o in self.orders], self.makespan)


def state_from_plan(problem: CutProblem, choice: np.ndarray, plan: Plan) -> CutState:
    """The state of ``plan``, a plan of ``problem.instance(choice)``."""
    instance = problem.instance(choice)
    helper_of, orders = index_solution(instance, plan)
    return CutState(np.asarray(choice).copy(), helper_of, orders, plan.makespan)


def result_state(problem: CutProblem, result: CutPlan) -> CutState:
    """The search state of a finished joint plan."""
    choice = np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids])
    return state_from_plan(problem, choice, result.plan)


def replanned(problem: CutProblem, result: CutPlan, choice: np.ndarray,
               helper_of: list[int], orders: list[list[IndexTask]],
               info: dict[str, Any]) -> CutPlan:
    """``result`` with new cuts, assignment and orders: same method, solve time and lower
    bound, ``info`` added to its own."""
    plan = plan_from_indices(problem.instance(choice), helper_of, orders, result.plan.method)
    plan.solve_time = result.plan.solve_time
    return cut_plan(problem, choice, plan, result.method, {**result.info, **info},
                   result.plan.lower_bound)


def _finish_vector(
    values: dict[str, np.ndarray], order: list[IndexTask], k: int, cand: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A helper's finish and sum of client finishes when client ``k`` takes each
    candidate (stage values ``cand``) and the others their current ``values`` (indexed by
    client); the recursion of :func:`flsplit.plan.evaluator.helper_finish`."""
    size = len(cand["body_fwd"])
    free = np.zeros(size)
    done = np.zeros(size)
    total = np.zeros(size)
    fwd_end: dict[int, np.ndarray] = {}
    for c, is_bwd in order:
        source = cand if c == k else {s: values[s][c] for s in STAGE_NAMES}
        if is_bwd:
            free = np.maximum(free, fwd_end[c] + source["tail_fwd_bwd"]) + source["body_bwd"]
            finish = free + source["down_head_bwd"]
            done = np.maximum(done, finish)
            total = total + finish
        else:
            free = np.maximum(free, source["head_fwd_up"]) + source["body_fwd"]
            fwd_end[c] = free
    return done, total


def repick(problem: CutProblem, state: CutState, deadline: float) -> CutState:
    """Re-pick every client's cut pair given its helper and the helper's order.

    For each helper, each client in turn takes the usable pair (helper memory respected)
    that minimises the helper's finish, ties broken by the sum of its clients' finishes;
    then the helper is re-sequenced with the planner's priority rules if that is better.
    Returns a new state whose makespan is never larger.
    """
    state = state.copy()
    usable = problem.usable()
    memory, capacity = problem.body_memory, problem.helper_memory
    clients = np.arange(len(state.choice))
    for h, order in enumerate(state.orders):
        members = [k for k, j in enumerate(state.helper_of) if j == h]
        if not members or time.perf_counter() > deadline:
            continue
        values = {s: problem.stages[s][clients, h, state.choice] for s in STAGE_NAMES}
        used = float(memory[state.choice[members]].sum())
        for k in members:
            room = capacity[h] - (used - memory[state.choice[k]]) + 1e-9
            options = np.flatnonzero(usable[k, h] & (memory <= room))
            if len(options) <= 1:
                continue
            cand = {s: problem.stages[s][k, h, options] for s in STAGE_NAMES}
            finish, total = _finish_vector(values, order, k, cand)
            tied = np.flatnonzero(finish <= finish.min() * (1 + 1e-12) + 1e-9)
            pick = int(options[tied[np.argmin(total[tied])]])
            used += memory[pick] - memory[state.choice[k]]
            state.choice[k] = pick
            for s in STAGE_NAMES:
                values[s][k] = problem.stages[s][k, h, pick]
    instance = problem.instance(state.choice)
    table = StageTable(instance)
    for h, order in enumerate(state.orders):
        members = sorted(k for k, j in enumerate(state.helper_of) if j == h)
        if not members:
            continue
        current = helper_finish(table, h, order)
        finish, new_order = best_list_schedule(table, h, members)
        if finish < current - 1e-9:
            state.orders[h] = new_order
    state.makespan = plan_from_indices(instance, state.helper_of, state.orders, "").makespan
    return state


def repick_plan(problem: CutProblem, result: CutPlan, time_limit: float = 0.5) -> CutPlan:
    """One :func:`repick` pass over a finished joint plan.

    The makespan never grows; among pairs that keep a helper's finish, each client takes
    the one that lets the helper's clients finish earliest in sum. Useful after a method
    that minimises the makespan alone (``exact``), whose clients off the critical path
    may hold any pair.

    Parameters
    ----------
    problem
        The problem ``result`` was planned for.
    result
        A joint plan of ``problem``.
    time_limit
        Seconds the pass may take.

    Returns
    -------
    CutPlan
        ``result`` itself when nothing changed, else the re-picked plan (same method,
        same lower bound, ``info["repicked"] = True``).
    """
    state = result_state(problem, result)
    better = repick(problem, state, time.perf_counter() + time_limit)
    same = bool((better.choice == state.choice).all()) and better.orders == state.orders
    if same or better.makespan > state.makespan + 1e-9:
        return result
    return replanned(problem, result, better.choice, better.helper_of, better.orders,
                      {"repicked": True})
