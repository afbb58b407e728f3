"""The evaluator: executes a plan and returns its makespan and timeline.

It is the single judge of every solver. Each helper runs its task list in order, one task
at a time and without preemption; a task starts as soon as the helper is free and the
task's input has arrived (forward: when stage 1 ends; backward: when stage 3 ends, i.e.
after the forward on the helper plus the client's tail stage). A client finishes when its
stage 5 ends; the makespan is the latest finish.

Because each client uses one helper, helpers are independent; :func:`helper_finish` is the
per-helper core that both :func:`evaluate` and the solvers' inner loops call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flsplit.plan.instance import Instance
from flsplit.plan.plan import BWD, FWD, Plan, check_plan

#: Index-based task: ``(client index, is_backward)``.
IndexTask = tuple[int, bool]


class StageTable:
    """Stage times arranged per helper as plain Python lists (fast scalar access).

    ``table.release[h][k]`` is stage 1 of client ``k`` on helper ``h``; likewise
    ``fwd`` (stage 2), ``delay`` (stage 3), ``bwd`` (stage 4) and ``tail`` (stage 5).
    """

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.release = instance.head_fwd_up.T.tolist()
        self.fwd = instance.body_fwd.T.tolist()
        self.delay = instance.tail_fwd_bwd.T.tolist()
        self.bwd = instance.body_bwd.T.tolist()
        self.tail = instance.down_head_bwd.T.tolist()


def helper_finish(table: StageTable, helper: int, order: Sequence[IndexTask]) -> float:
    """Return the time the last client of ``helper`` finishes when it runs ``order``.

    ``order`` must contain, for each client served, its forward before its backward.
    """
    release, fwd, delay = table.release[helper], table.fwd[helper], table.delay[helper]
    bwd, tail = table.bwd[helper], table.tail[helper]
    free = 0.0
    done = 0.0
    fwd_end: dict[int, float] = {}
    for client, is_bwd in order:
        if is_bwd:
            ready = fwd_end[client] + delay[client]
            free = (free if free > ready else ready) + bwd[client]
            finish = free + tail[client]
            if finish > done:
                done = finish
        else:
            ready = release[client]
            free = (free if free > ready else ready) + fwd[client]
            fwd_end[client] = free
    return done


@dataclass(frozen=True)
class Span:
    """One bar of the timeline.

    ``resource`` is a helper id for stages ``"fwd"``/``"bwd"`` and a client id for the
    client-side stages ``"head_fwd_up"``, ``"tail_fwd_bwd"`` and ``"down_head_bwd"``.
    """

    resource: str
    client: str
    stage: str
    start: float
    end: float


@dataclass
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    makespan
        Time (ms) at which the last client finishes stage 5.
    timeline
        Every stage of every client as a :class:`Span`, helper tasks included.
    client_finish
        Client id -> finish time (ms).
    helper_finish
        Helper id -> finish time of its last client (0 for idle helpers).
    """

    makespan: float
    timeline: list[Span]
    client_finish: dict[str, float]
    helper_finish: dict[str, float]


def evaluate(instance: Instance, plan: Plan) -> Evaluation:
    """Execute ``plan`` on ``instance``.

    Raises
    ------
    PlanError
        If the plan is infeasible (see :func:`flsplit.plan.plan.check_plan`).
    """
    check_plan(instance, plan)
    client_index = {c: k for k, c in enumerate(instance.client_ids)}
    timeline: list[Span] = []
    client_finish: dict[str, float] = {}
    finish_by_helper: dict[str, float] = {}
    for h, helper in enumerate(instance.helper_ids):
        free = 0.0
        fwd_end: dict[str, float] = {}
        done = 0.0
        for client, kind in plan.order.get(helper, []):
            k = client_index[client]
            if kind == FWD:
                ready = float(instance.head_fwd_up[k, h])
                start = max(free, ready)
                free = start + float(instance.body_fwd[k, h])
                fwd_end[client] = free
                timeline.append(Span(client, client, "head_fwd_up", 0.0, ready))
                timeline.append(Span(helper, client, FWD, start, free))
            else:
                delay = float(instance.tail_fwd_bwd[k, h])
                ready = fwd_end[client] + delay
                start = max(free, ready)
                free = start + float(instance.body_bwd[k, h])
                finish = free + float(instance.down_head_bwd[k, h])
                timeline.append(Span(client, client, "tail_fwd_bwd", fwd_end[client], ready))
                timeline.append(Span(helper, client, BWD, start, free))
                timeline.append(Span(client, client, "down_head_bwd", free, finish))
                client_finish[client] = finish
                done = max(done, finish)
        finish_by_helper[helper] = done
    makespan = max(client_finish.values()) if client_finish else 0.0
    return Evaluation(makespan, timeline, client_finish, finish_by_helper)


def evaluated(instance: Instance, plan: Plan) -> Plan:
    """Set ``plan.makespan`` from :func:`evaluate` and return the plan."""
    plan.makespan = evaluate(instance, plan).makespan
    if plan.lower_bound is not None:
        plan.proven_optimal = plan.makespan <= plan.lower_bound * (1 + 1e-9) + 1e-9
    return plan
