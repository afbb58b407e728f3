"""Exact ordering of one helper's tasks with CP-SAT (one machine, release, delay, tail).

Used by the decomposition method on the helpers that decide the makespan. Times are
floored to integer ticks (exact for integer instances with a moderate horizon); the
returned order is always re-timed by the evaluator core.
"""

from __future__ import annotations

import math

from ortools.sat.python import cp_model

from flsplit.plan.cpsat import HORIZON_TICKS, make_solver
from flsplit.plan.evaluator import IndexTask, StageTable, helper_finish


def sequence_exact(
    table: StageTable,
    helper: int,
    clients: list[int],
    time_limit: float,
    hint: list[IndexTask] | None = None,
    seed: int = 0,
    workers: int = 2,
) -> tuple[float, list[IndexTask], bool]:
    """Order one helper's tasks with CP-SAT (one machine, release, delay and tail).

    Returns ``(finish, order, optimal)`` where ``finish`` is re-timed exactly by the
    evaluator core and never worse than the hint's.
    """
    if not clients:
        return 0.0, [], True
    release, fwd, delay = table.release[helper], table.fwd[helper], table.delay[helper]
    bwd, tail = table.bwd[helper], table.tail[helper]
    hint_finish = helper_finish(table, helper, hint) if hint else math.inf
    horizon_ms = hint_finish if hint else sum(
        release[k] + fwd[k] + delay[k] + bwd[k] + tail[k] for k in clients)
    values = [release, fwd, delay, bwd, tail]
    integral = all(float(v[k]).is_integer() for v in values for k in clients)
    scale = 1.0 if integral and horizon_ms <= 10 * HORIZON_TICKS else HORIZON_TICKS / max(
        horizon_ms, 1e-9)
    horizon = math.floor(horizon_ms * scale + 1e-9) + 1

    def tick(value: float) -> int:
        return math.floor(value * scale + 1e-9)

    model = cp_model.CpModel()
    makespan = model.NewIntVar(0, horizon, "ms")
    starts: dict[IndexTask, cp_model.IntVar] = {}
    intervals = []
    for k in clients:
        sf = model.NewIntVar(tick(release[k]), horizon, f"sf{k}")
        sb = model.NewIntVar(0, horizon, f"sb{k}")
        p2, p4 = tick(fwd[k]), tick(bwd[k])
        intervals.append(model.NewIntervalVar(sf, p2, sf + p2, f"f{k}"))
        intervals.append(model.NewIntervalVar(sb, p4, sb + p4, f"b{k}"))
        model.Add(sb >= sf + p2 + tick(delay[k]))
        model.Add(makespan >= sb + p4 + tick(tail[k]))
        starts[k, False], starts[k, True] = sf, sb
    model.AddNoOverlap(intervals)
    model.Minimize(makespan)
    if hint:
        free, fwd_end = 0.0, {}
        for k, is_bwd in hint:
            ready = fwd_end[k] + delay[k] if is_bwd else release[k]
            begin = max(free, ready)
            free = begin + (bwd[k] if is_bwd else fwd[k])
            if not is_bwd:
                fwd_end[k] = free
            model.AddHint(starts[k, is_bwd], tick(begin))
    solver = make_solver(time_limit, seed, workers)
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return hint_finish, list(hint or []), False
    order = sorted(starts, key=lambda task: (solver.Value(starts[task]), task[1]))
    finish = helper_finish(table, helper, order)
    if finish > hint_finish:
        return hint_finish, list(hint or []), False
    return finish, order, status == cp_model.OPTIMAL and scale == 1.0
