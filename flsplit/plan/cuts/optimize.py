"""Cut optimizer: each client's cut pair chosen jointly with assignment and schedule.

Input is a :class:`~flsplit.plan.cuts.problem.CutProblem` (stage times for every client,
helper and candidate cut pair). Methods (:data:`CUT_METHODS`):

``integrated``
    For every (client, helper) pair pre-select a cut pair with a congestion-aware proxy
    (``critical path + lam * helper work`` for :data:`LAMBDAS`; the least helper work
    whose critical path is within a target, :data:`TARGETS`) - pairs the client cannot
    hold, or whose body does not fit the helper, are never taken. These choices and the
    best single pairs are screened with the fast planner, the best is solved with the
    planner, each client keeps the pair of the helper it got, and the result is refined
    by :func:`~flsplit.plan.cuts.repick.repick` + re-solve rounds.
``alternating``
    Start from the best single pair (by bound), then repeat: fix cuts -> solve
    assignment and schedule -> :func:`repick` every client's pair given its helper and
    the helper's order, judged by the evaluator's recursion -> until no gain.
``exact``
    One CP-SAT model over (client, helper, cut pair) options with optional intervals
    and NoOverlap per helper (small problems; proves optimality).
``auto`` (default)
    ``exact`` for small problems, else the better of ``integrated`` (40% of the time
    limit) and ``alternating`` (30%); the time left goes to the planner, half for the
    winner's cuts (plus a last repick), half for the best single cut pair screened, and
    the best plan is returned. With more than :data:`AUTO_PHASED_SECONDS`, these phases
    share that much and the rest goes to a local search over cuts and helpers
    (:func:`flsplit.plan.cuts.search.anneal`) before the last planner phase: the phases
    stop gaining after a few seconds, the search keeps gaining for a few minutes.

Every returned plan is judged by :func:`flsplit.plan.evaluate` on the instance built
for the chosen cuts; its ``lower_bound`` is a bound for the *joint* problem
(:func:`joint_bound`).
"""

from __future__ import annotations

import time

import numpy as np

from flsplit.plan.cuts.bounds import joint_bound
from flsplit.plan.cuts.exact import exact_cuts, pareto_options
from flsplit.plan.cuts.heuristics import (
    alternating,
    best_single_pair,
    fixed_cut_plan,
    integrated,
    single_pair_ranking,
    solve_choice,
)
from flsplit.plan.cuts.plan import CutPlan
from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.cuts.repick import repick, repick_plan, replanned, result_state, state_from_plan
from flsplit.plan.cuts.search import anneal

# The methods' building blocks stay importable from here, where callers find the
# optimizer as a whole.
__all__ = [
    "AUTO_ALTERNATING_SHARE",
    "AUTO_EXACT_OPTIONS",
    "AUTO_EXACT_PAIRS",
    "AUTO_INTEGRATED_SHARE",
    "AUTO_PHASED_SECONDS",
    "CUT_METHODS",
    "CutPlan",
    "alternating",
    "best_single_pair",
    "fixed_cut_plan",
    "integrated",
    "joint_bound",
    "optimize_cuts",
    "repick",
    "repick_plan",
    "single_pair_ranking",
]

CUT_METHODS: tuple[str, ...] = ("auto", "integrated", "alternating", "exact")
#: ``auto`` uses the exact joint model up to this many client-helper pairs and this many
#: non-dominated (client, helper, cut pair) options.
AUTO_EXACT_PAIRS = 16
AUTO_EXACT_OPTIONS = 400
#: Share of ``auto``'s budget for ``integrated``.
AUTO_INTEGRATED_SHARE = 0.4
#: ``auto`` ends ``alternating`` at this share and polishes the winner with the rest.
AUTO_ALTERNATING_SHARE = 0.7
#: Seconds of ``auto``'s budget split between the phases above; any time beyond goes to
#: the local search (:func:`flsplit.plan.cuts.search.anneal`) before the polish.
AUTO_PHASED_SECONDS = 10.0


def _search(problem: CutProblem, result: CutPlan, deadline: float, seed: int) -> CutPlan:
    """Run the local search from ``result`` until ``deadline``; keep the better plan.

    ``info["search"]`` records the moves tried and accepted and the makespan before."""
    state = result_state(problem, result)
    found = anneal(problem, state.choice, state.helper_of, deadline, orders=state.orders,
                   seed=seed)
    summary = {"iterations": found.iterations, "accepted": found.accepted,
               "start_makespan": result.makespan}
    if found.makespan >= result.makespan - 1e-9:
        result.info["search"] = summary
        return result
    return replanned(problem, result, found.choice, found.helper_of, found.orders,
                      {"search": summary})


def _polish(problem: CutProblem, result: CutPlan, single: int | None, solver: str,
            deadline: float, seed: int) -> CutPlan:
    """Spend the time left on the planner: half for the winner's cuts (then one repick),
    half for the best single cut pair ``single``; return the best plan."""
    best = result
    jobs: list[tuple[str, np.ndarray]] = [
        ("joint", np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids]))]
    if single is not None:
        jobs.append(("single", np.full(len(problem.client_ids), single)))
    for i, (label, choice) in enumerate(jobs):
        left = (deadline - time.perf_counter() - 0.02) / (len(jobs) - i)
        if left < 0.05:
            break
        plan = solve_choice(problem, choice, solver, left, seed)
        if plan is None or plan.makespan >= best.makespan - 1e-9:
            continue
        state = state_from_plan(problem, choice, plan)
        if label == "joint":
            state = min(state, repick(problem, state, deadline), key=lambda s: s.makespan)
        best = replanned(problem, result, state.choice, state.helper_of, state.orders,
                          {"polished": label})
    return best


def optimize_cuts(problem: CutProblem, method: str = "auto", time_limit: float = 2.0,
                  seed: int = 0, solver: str = "auto") -> CutPlan:
    """Choose cut pairs, assignment and order jointly.

    Parameters
    ----------
    problem
        Stage times per client, helper and candidate pair
        (:func:`flsplit.plan.cuts.problem.build_problem`).
    method
        One of :data:`CUT_METHODS`.
    time_limit
        Seconds for the whole joint plan.
    seed
        Seed of the planner's random choices.
    solver
        Planner method (:data:`flsplit.plan.scheduling.solve.METHODS`) for the final fixed-cut
        solve of ``integrated``; ``alternating`` rounds use ``greedy``.

    Returns
    -------
    CutPlan
        Cuts per client and an evaluated plan whose ``lower_bound`` is
        :func:`joint_bound` (or the exact model's proven bound).
    """
    if method not in CUT_METHODS:
        raise ValueError(f"method: unknown {method!r}, expected one of {', '.join(CUT_METHODS)}")
    begin = time.perf_counter()
    if method == "auto":
        method_used = "integrated"
        num_clients, num_helpers, _ = problem.shape
        # pareto_options only on small problems: it is quadratic in the options
        if (num_clients * num_helpers <= AUTO_EXACT_PAIRS
                and int(pareto_options(problem).sum()) <= AUTO_EXACT_OPTIONS):
            method_used = "exact"
    else:
        method_used = method
    if method_used == "exact":
        result = exact_cuts(problem, time_limit=time_limit, seed=seed)
    elif method_used == "alternating":
        result = alternating(problem, time_limit=time_limit, seed=seed)
    elif method == "auto":
        phased = min(time_limit, AUTO_PHASED_SECONDS)
        search_time = time_limit - phased
        first = integrated(problem, time_limit=AUTO_INTEGRATED_SHARE * phased, seed=seed,
                           solver=solver)
        left = AUTO_ALTERNATING_SHARE * phased - (time.perf_counter() - begin)
        second = alternating(problem, time_limit=max(0.05, left), seed=seed)
        result = min((first, second), key=lambda r: r.makespan)
        method_used = result.method
        if search_time > 0:
            result = _search(problem, result, begin + AUTO_ALTERNATING_SHARE * phased
                             + search_time, seed)
        result = _polish(problem, result, first.info.get("best_single"), solver,
                         begin + time_limit, seed)
    else:
        result = integrated(problem, time_limit=time_limit, seed=seed, solver=solver)
    result.plan.solve_time = time.perf_counter() - begin
    if method == "auto":
        result.info["auto_choice"] = method_used
        result.method = "auto"
    result.plan.method = f"cuts-{result.method}"
    return result
