"""CP-SAT models: the full assignment + sequencing model and the one-helper sequencing model.

Times are converted to integer ticks by *flooring* ``ms * scale``. The integer model is
then a relaxation of the real one, so CP-SAT's objective bound divided by ``scale`` is a
valid lower bound in ms; plans are always re-timed by the evaluator from the orders the
model returns. With integer stage times and a moderate horizon ``scale`` is 1 and the
model is exact.
"""

from __future__ import annotations

import math
import time

import numpy as np
from ortools.sat.python import cp_model

from flsplit.plan.cpsat import HORIZON_TICKS, MEMORY_TICKS, make_solver
from flsplit.plan.evaluator import IndexTask, evaluate
from flsplit.plan.instance import STAGE_NAMES, Instance
from flsplit.plan.plan import Plan, PlanError
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.decomposition import decomposition
from flsplit.plan.scheduling.solution import to_plan

#: Share of the time limit spent on the decomposition warm start when none is given.
WARM_START_SHARE = 0.3


def tick_scale(instance: Instance, horizon_ms: float) -> float:
    """Ticks per ms: 1 for integer instances with a small horizon, else fine scaling."""
    integral = all(np.all(np.floor(instance.stage(s)) == instance.stage(s)) for s in STAGE_NAMES)
    if integral and horizon_ms <= 10 * HORIZON_TICKS:
        return 1.0
    return HORIZON_TICKS / max(horizon_ms, 1e-9)


def _ticks(values: np.ndarray, scale: float) -> np.ndarray:
    return np.floor(values * scale + 1e-9).astype(np.int64)


def solve_exact(
    instance: Instance,
    time_limit: float = 10.0,
    seed: int = 0,
    warm_start: Plan | None = None,
    workers: int = 2,
    bound: float | None = None,
) -> Plan:
    """Solve the full problem with CP-SAT.

    Parameters
    ----------
    instance
        The instance.
    time_limit
        Seconds for CP-SAT.
    seed
        CP-SAT random seed.
    warm_start
        A feasible plan used as hint (its makespan also caps the horizon). Without one
        :func:`flsplit.plan.scheduling.decomposition.decomposition` provides it.
    workers
        CP-SAT worker threads.
    bound
        A known lower bound (ms) added as a constraint and merged into the result.

    Returns
    -------
    Plan
        The better of the CP-SAT solution and the warm start, with the proven bound.
    """
    start = time.perf_counter()
    if bound is None:
        bound = lower_bound(instance)
    if warm_start is None:
        warm_start = decomposition(instance, time_limit=WARM_START_SHARE * time_limit,
                                   seed=seed, bound=bound)
    horizon_ms = warm_start.makespan
    scale = tick_scale(instance, horizon_ms)
    horizon = math.floor(horizon_ms * scale + 1e-9) + 1
    num_clients, num_helpers = instance.num_clients, instance.num_helpers
    s1, s2, s3, s4, s5 = (_ticks(instance.stage(s), scale) for s in STAGE_NAMES)
    fits = instance.memory_fits()

    model = cp_model.CpModel()
    fwd_start = [model.NewIntVar(0, horizon, f"sf{k}") for k in range(num_clients)]
    bwd_start = [model.NewIntVar(0, horizon, f"sb{k}") for k in range(num_clients)]
    finish = [model.NewIntVar(0, horizon, f"end{k}") for k in range(num_clients)]
    makespan = model.NewIntVar(math.floor(bound * scale) if bound else 0, horizon, "ms")
    chosen: dict[tuple[int, int], cp_model.IntVar] = {}
    intervals: list[list[cp_model.IntervalVar]] = [[] for _ in range(num_helpers)]
    for k in range(num_clients):
        options = []
        for h in range(num_helpers):
            if not fits[k, h]:
                continue
            x = model.NewBoolVar(f"x{k}_{h}")
            chosen[k, h] = x
            options.append(x)
            p2, p4 = int(s2[k, h]), int(s4[k, h])
            intervals[h].append(model.NewOptionalIntervalVar(
                fwd_start[k], p2, fwd_start[k] + p2, x, f"f{k}_{h}"))
            intervals[h].append(model.NewOptionalIntervalVar(
                bwd_start[k], p4, bwd_start[k] + p4, x, f"b{k}_{h}"))
            model.Add(fwd_start[k] >= int(s1[k, h])).OnlyEnforceIf(x)
            model.Add(bwd_start[k] >= fwd_start[k] + p2 + int(s3[k, h])).OnlyEnforceIf(x)
            model.Add(finish[k] >= bwd_start[k] + p4 + int(s5[k, h])).OnlyEnforceIf(x)
        model.AddExactlyOne(options)
        model.Add(makespan >= finish[k])
    for h in range(num_helpers):
        model.AddNoOverlap(intervals[h])
        users = [(k, x) for (k, j), x in chosen.items() if j == h]
        if sum(instance.body_memory[k] for k, _ in users) > instance.helper_memory[h] + 1e-9:
            # floored needs and ceiled capacity: a relaxation; solutions are re-checked
            unit = MEMORY_TICKS / max(float(instance.helper_memory[h]), 1e-9)
            model.Add(sum(math.floor(instance.body_memory[k] * unit) * x
                          for k, x in users)
                      <= math.ceil(instance.helper_memory[h] * unit))
    model.Minimize(makespan)
    _add_hint(model, instance, warm_start, chosen, fwd_start, bwd_start, scale)

    solver = make_solver(time_limit - (time.perf_counter() - start), seed, workers)
    status = solver.Solve(model)
    proven = max(bound, solver.BestObjectiveBound() / scale) if status in (
        cp_model.OPTIMAL, cp_model.FEASIBLE) else bound
    if status == cp_model.INFEASIBLE:
        # the warm start is feasible, so the integer model only refuted "< horizon"
        proven = max(bound, horizon_ms)
    best = warm_start
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        helper_of = [next(h for h in range(num_helpers) if (k, h) in chosen
                          and solver.Value(chosen[k, h])) for k in range(num_clients)]
        orders: list[list[tuple[float, int, IndexTask]]] = [[] for _ in range(num_helpers)]
        for k, h in enumerate(helper_of):
            orders[h].append((solver.Value(fwd_start[k]), 0, (k, False)))
            orders[h].append((solver.Value(bwd_start[k]), 1, (k, True)))
        task_orders = [[task for _, _, task in sorted(o)] for o in orders]
        try:
            candidate = to_plan(instance, helper_of, task_orders, "exact", 0.0, proven)
        except PlanError:  # memory rounding in the relaxed model; keep the warm start
            candidate = None
        if candidate is not None and candidate.makespan <= best.makespan:
            best = candidate
    plan = Plan(best.assignment, best.order, best.makespan, proven,
                time.perf_counter() - start, "exact",
                info={"cp_sat_status": solver.StatusName(status), "scale": scale})
    plan.proven_optimal = plan.makespan <= proven * (1 + 1e-9) + 1e-9
    return plan


def _add_hint(
    model: cp_model.CpModel,
    instance: Instance,
    plan: Plan,
    chosen: dict[tuple[int, int], cp_model.IntVar],
    fwd_start: list[cp_model.IntVar],
    bwd_start: list[cp_model.IntVar],
    scale: float,
) -> None:
    client_index = {c: k for k, c in enumerate(instance.client_ids)}
    helper_index = {h: j for j, h in enumerate(instance.helper_ids)}
    for (k, h), x in chosen.items():
        model.AddHint(x, helper_index[plan.assignment[instance.client_ids[k]]] == h)
    # floored durations never make the hinted (real) start times infeasible
    for span in evaluate(instance, plan).timeline:
        if span.stage in ("fwd", "bwd"):
            k = client_index[span.client]
            var = fwd_start[k] if span.stage == "fwd" else bwd_start[k]
            model.AddHint(var, math.floor(span.start * scale + 1e-9))
