"""A joint plan of cuts, assignment and order, and the helpers that build one.

The cut optimizers (:mod:`flsplit.plan.cuts.heuristics`, :mod:`flsplit.plan.cuts.exact`,
:mod:`flsplit.plan.cuts.links`) work on index data - a helper index per client and per
helper a list of ``(client index, is_backward)`` tasks - and a per-client choice of cut
pair; this module turns those into evaluated :class:`~flsplit.plan.plan.Plan` and
:class:`CutPlan` objects, so every optimizer builds them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.evaluator import IndexTask, evaluate
from flsplit.plan.instance import Instance
from flsplit.plan.plan import BWD, FWD, Plan


@dataclass
class CutPlan:
    """A joint plan: cut pair per client plus assignment and order.

    Attributes
    ----------
    instance
        Instance built for the chosen cuts (``meta["cuts"]``: client -> ``[c1, c2]``).
    plan
        Evaluated plan on :attr:`instance`; ``lower_bound`` is the joint bound.
    cuts
        Client id -> ``(c1, c2)``.
    method
        Cut method that produced it.
    info
        Details (e.g. the winning phase, the proxy weight).
    """

    instance: Instance
    plan: Plan
    cuts: dict[str, tuple[int, int]]
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        """Evaluator makespan (ms)."""
        return self.plan.makespan


def plan_from_indices(instance: Instance, helper_of: list[int],
                      orders: list[list[IndexTask]], method: str) -> Plan:
    """An evaluated plan from index data.

    Parameters
    ----------
    instance
        Instance the indices refer to.
    helper_of
        Helper index of every client.
    orders
        Per helper, its ``(client index, is_backward)`` tasks in order.
    method
        Method name stored on the plan.

    Returns
    -------
    Plan
        With ``makespan`` set by :func:`flsplit.plan.evaluate`.
    """
    clients, helpers = instance.client_ids, instance.helper_ids
    plan = Plan(
        assignment={clients[k]: helpers[h] for k, h in enumerate(helper_of)},
        order={helpers[h]: [(clients[k], BWD if b else FWD) for k, b in orders[h]]
               for h in range(len(helpers))},
        method=method,
    )
    plan.makespan = evaluate(instance, plan).makespan
    return plan


def index_solution(instance: Instance, plan: Plan) -> tuple[list[int], list[list[IndexTask]]]:
    """The index data of ``plan`` (inverse of :func:`plan_from_indices`).

    Returns
    -------
    tuple
        ``(helper_of, orders)``: helper index per client, per helper its
        ``(client index, is_backward)`` tasks in order.
    """
    c_index = {c: k for k, c in enumerate(instance.client_ids)}
    h_index = {h: j for j, h in enumerate(instance.helper_ids)}
    helper_of = [h_index[plan.assignment[c]] for c in instance.client_ids]
    orders: list[list[IndexTask]] = [[] for _ in instance.helper_ids]
    for helper, tasks in plan.order.items():
        orders[h_index[helper]] = [(c_index[c], kind == BWD) for c, kind in tasks]
    return helper_of, orders


def cut_plan(problem: CutProblem, choice: np.ndarray, plan: Plan, method: str,
            info: dict[str, Any], bound: float | None = None) -> CutPlan:
    """Wrap a plan for a per-client choice into an evaluated :class:`CutPlan`.

    Parameters
    ----------
    problem
        The cut problem.
    choice
        Cut pair index per client.
    plan
        A plan of ``problem.instance(choice)``; its makespan, ``info["cuts"]`` and, given
        ``bound``, its lower bound and optimality flag are set in place.
    method, info
        Stored on the :class:`CutPlan`.
    bound
        A lower bound of the joint problem, if known.

    Returns
    -------
    CutPlan
        The plan with its instance and per-client cuts.
    """
    instance = problem.instance(choice)
    plan.makespan = evaluate(instance, plan).makespan
    if bound is not None:
        plan.lower_bound = bound
        plan.proven_optimal = plan.makespan <= bound * (1 + 1e-9) + 1e-9
    cuts = {c: (int(problem.pairs[p][0]), int(problem.pairs[p][1]))
            for c, p in zip(problem.client_ids, choice, strict=True)}
    plan.info = {**plan.info, "cuts": {c: list(v) for c, v in cuts.items()}}
    return CutPlan(instance, plan, cuts, method, info)
