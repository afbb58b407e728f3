"""Exact joint model: cut pair, helper and order in one CP-SAT model (small problems).

Every usable (client, helper, cut pair) option is a Boolean; each client takes exactly
one. A client has one forward and one backward start; each option adds optional forward
and backward intervals on its helper (``AddNoOverlap`` per helper) and the release,
delay and tail precedences of its stage times; helper memory is a knapsack over options.
As in :mod:`flsplit.plan.scheduling.exact`, times are *floored* to integer ticks, so the model is a
relaxation and its bound (divided by the scale) is a valid bound in ms; the plan it
returns is re-timed by the evaluator. Integer stage times with a small horizon are
modelled exactly (scale 1).
"""

from __future__ import annotations

import math
import time

import numpy as np
from ortools.sat.python import cp_model

from flsplit.plan.cpsat import HORIZON_TICKS, MEMORY_TICKS, make_solver
from flsplit.plan.cuts.bounds import joint_bound
from flsplit.plan.cuts.heuristics import alternating
from flsplit.plan.cuts.plan import CutPlan, cut_plan, plan_from_indices
from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.evaluator import IndexTask
from flsplit.plan.instance import STAGE_NAMES
from flsplit.plan.plan import PlanError

#: Share of the time limit spent on the alternating warm start.
WARM_START_SHARE = 0.25


def _scale(problem: CutProblem, horizon_ms: float) -> float:
    integral = all(np.all(np.floor(v) == v) for v in problem.stages.values())
    if integral and horizon_ms <= 10 * HORIZON_TICKS:
        return 1.0
    return HORIZON_TICKS / max(horizon_ms, 1e-9)


def pareto_options(problem: CutProblem) -> np.ndarray:
    """``K x H x P`` mask of usable options not dominated by another usable option of the
    same client and helper (every stage time and the body memory at most as large, one
    strictly smaller or equal with a lower index). Dropping dominated options keeps the
    optimum: the evaluator's makespan is non-decreasing in every stage time."""
    usable = problem.usable()
    keep = np.zeros_like(usable)
    num_clients, num_helpers, _ = problem.shape
    for k in range(num_clients):
        for h in range(num_helpers):
            idx = np.flatnonzero(usable[k, h])
            if not len(idx):
                continue
            vec = np.column_stack([problem.stages[s][k, h, idx] for s in STAGE_NAMES]
                                  + [problem.body_memory[idx]])
            leq = (vec[:, None, :] <= vec[None, :, :]).all(axis=2)  # [a, b]: a <= b
            lt = (vec[:, None, :] < vec[None, :, :]).any(axis=2)
            earlier = np.arange(len(idx))[:, None] < np.arange(len(idx))[None, :]
            dominated = (leq & (lt | earlier)).any(axis=0)
            keep[k, h, idx[~dominated]] = True
    return keep


def exact_cuts(problem: CutProblem, time_limit: float = 10.0, seed: int = 0,
               workers: int = 2) -> CutPlan:
    """Solve cuts, assignment and order with CP-SAT; never worse than its warm start.

    Returns
    -------
    CutPlan
        With ``plan.lower_bound`` the best of :func:`~flsplit.plan.cuts.bounds.joint_bound` and
        CP-SAT's proven bound; ``info["cp_sat_status"]`` says whether it is optimal.
    """
    begin = time.perf_counter()
    bound = joint_bound(problem)
    warm = alternating(problem, time_limit=WARM_START_SHARE * time_limit, seed=seed)
    horizon_ms = warm.makespan
    scale = _scale(problem, horizon_ms)
    horizon = math.floor(horizon_ms * scale + 1e-9) + 1
    ticks = {s: np.floor(problem.stages[s] * scale + 1e-9).astype(np.int64)
             for s in STAGE_NAMES}
    usable = pareto_options(problem)
    num_clients, num_helpers, _ = problem.shape

    model = cp_model.CpModel()
    fwd_start = [model.NewIntVar(0, horizon, f"sf{k}") for k in range(num_clients)]
    bwd_start = [model.NewIntVar(0, horizon, f"sb{k}") for k in range(num_clients)]
    makespan = model.NewIntVar(math.floor(bound * scale), horizon, "makespan")
    options: dict[tuple[int, int, int], cp_model.IntVar] = {}
    intervals: list[list[cp_model.IntervalVar]] = [[] for _ in range(num_helpers)]
    for k in range(num_clients):
        for h, p in zip(*np.nonzero(usable[k]), strict=True):
            h, p = int(h), int(p)
            x = model.NewBoolVar(f"x{k}_{h}_{p}")
            options[k, h, p] = x
            f, b = int(ticks["body_fwd"][k, h, p]), int(ticks["body_bwd"][k, h, p])
            intervals[h].append(model.NewOptionalIntervalVar(
                fwd_start[k], f, fwd_start[k] + f, x, f"f{k}_{h}_{p}"))
            intervals[h].append(model.NewOptionalIntervalVar(
                bwd_start[k], b, bwd_start[k] + b, x, f"b{k}_{h}_{p}"))
            model.Add(fwd_start[k] >= int(ticks["head_fwd_up"][k, h, p])).OnlyEnforceIf(x)
            model.Add(bwd_start[k] >= fwd_start[k] + f
                      + int(ticks["tail_fwd_bwd"][k, h, p])).OnlyEnforceIf(x)
            model.Add(makespan >= bwd_start[k] + b
                      + int(ticks["down_head_bwd"][k, h, p])).OnlyEnforceIf(x)
        model.AddExactlyOne([x for (c, _, _), x in options.items() if c == k])
    for h in range(num_helpers):
        model.AddNoOverlap(intervals[h])
        unit = MEMORY_TICKS / max(float(problem.helper_memory[h]), 1e-9)
        users = [(p, x) for (_, j, p), x in options.items() if j == h]
        model.Add(sum(math.floor(problem.body_memory[p] * unit) * x for p, x in users)
                  <= math.ceil(problem.helper_memory[h] * unit))
    model.Minimize(makespan)
    h_index = {h: j for j, h in enumerate(problem.helper_ids)}
    for k, c in enumerate(problem.client_ids):
        h = h_index[warm.plan.assignment[c]]
        p = problem.pair_index(warm.cuts[c])
        if (k, h, p) in options:  # a dominated warm-start option gets no hint
            for key, x in options.items():
                if key[0] == k:
                    model.AddHint(x, key == (k, h, p))

    solver = make_solver(time_limit - (time.perf_counter() - begin), seed, workers)
    status = solver.Solve(model)
    solved = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    proven = max(bound, solver.BestObjectiveBound() / scale) if solved else bound
    if status == cp_model.INFEASIBLE:
        proven = max(bound, horizon_ms)
    best = warm
    if solved:
        choice = np.zeros(num_clients, dtype=int)
        helper_of = [0] * num_clients
        for (k, h, p), x in options.items():
            if solver.Value(x):
                choice[k], helper_of[k] = p, h
        timed: list[list[tuple[int, int, IndexTask]]] = [[] for _ in range(num_helpers)]
        for k, h in enumerate(helper_of):
            timed[h].append((solver.Value(fwd_start[k]), 0, (k, False)))
            timed[h].append((solver.Value(bwd_start[k]), 1, (k, True)))
        orders = [[task for _, _, task in sorted(tasks)] for tasks in timed]
        try:
            plan = plan_from_indices(problem.instance(choice), helper_of, orders, "cuts-exact")
            if plan.makespan <= best.makespan:
                best = cut_plan(problem, choice, plan, "exact", {})
        except PlanError:  # memory rounding of the relaxed knapsack: keep the warm start
            pass
    best.plan.lower_bound = proven
    best.plan.proven_optimal = best.plan.makespan <= proven * (1 + 1e-9) + 1e-9
    best.method = "exact"
    best.info = {**best.info, "cp_sat_status": solver.StatusName(status), "scale": scale}
    return best
