"""Planning: instances, evaluator, solvers and lower bounds (no torch, no flwr).

Typical use every round::

    from flsplit.plan import Instance, solve, evaluate

    plan = solve(instance, method="auto", time_limit=2.0)
    timeline = evaluate(instance, plan).timeline

See ``docs/planner.md`` for formats and methods.
"""

from flsplit.plan.evaluator import Evaluation, Span, evaluate
from flsplit.plan.gantt import gantt
from flsplit.plan.generator import generate_instance, random_instance
from flsplit.plan.instance import (
    STAGES,
    Instance,
    InstanceError,
    load_instance,
    save_instance,
    to_slotted,
)
from flsplit.plan.plan import Plan, PlanError, check_plan, load_plan, save_plan
from flsplit.plan.scheduling.bounds import critical_path_bound, load_bound, lower_bound
from flsplit.plan.scheduling.packing import PackingError, PlanningError, pack
from flsplit.plan.scheduling.relaxation import relaxation_bound
from flsplit.plan.scheduling.solve import METHODS, solve

__all__ = [
    "METHODS",
    "STAGES",
    "Evaluation",
    "Instance",
    "InstanceError",
    "PackingError",
    "Plan",
    "PlanError",
    "PlanningError",
    "Span",
    "check_plan",
    "critical_path_bound",
    "evaluate",
    "gantt",
    "generate_instance",
    "load_bound",
    "load_instance",
    "load_plan",
    "lower_bound",
    "pack",
    "random_instance",
    "relaxation_bound",
    "save_instance",
    "save_plan",
    "solve",
    "to_slotted",
]
