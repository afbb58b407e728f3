"""Multi-hop placement: one client's model over a chain of helpers, micro-batch size.

Modules: :mod:`~flsplit.plan.multihop.problem` (the problem, stages, plan),
:mod:`~flsplit.plan.multihop.evaluation` (the judge: stages, memory, pipeline latency),
:mod:`~flsplit.plan.multihop.placement` (exact placement for a fixed micro-batch size),
:mod:`~flsplit.plan.multihop.micro_batch` (micro-batch size for a fixed placement),
:mod:`~flsplit.plan.multihop.optimize` (both, alternated) and
:mod:`~flsplit.plan.multihop.files` (instance and plan JSON). Every public name of
these is importable from this package. Many clients sharing the helpers:
:mod:`~flsplit.plan.multihop.chain_problem` (problem, routes, plan),
:mod:`~flsplit.plan.multihop.chain_evaluation` (the judge),
:mod:`~flsplit.plan.multihop.chain_bound` (lower bound),
:mod:`~flsplit.plan.multihop.chain_planner` (the planner),
:mod:`~flsplit.plan.multihop.chain_columns` (its column-generation construction),
:mod:`~flsplit.plan.multihop.chain_files` and :mod:`~flsplit.plan.multihop.chain_cli`.
"""

from flsplit.plan.multihop.evaluation import (
    evaluate_placement,
    pipeline_latency,
    placement_stages,
)
from flsplit.plan.multihop.files import load_problem, problem_from_dict, save_plan
from flsplit.plan.multihop.micro_batch import best_micro_batch
from flsplit.plan.multihop.optimize import optimize_placement
from flsplit.plan.multihop.placement import (
    StageTables,
    brute_force,
    diagnose,
    place,
    single_hop,
    stage_tables,
)
from flsplit.plan.multihop.problem import (
    MULTIHOP_FORMAT,
    MULTIHOP_PLAN_FORMAT,
    MULTIHOP_VERSION,
    MultihopError,
    MultihopPlan,
    MultihopProblem,
    Stage,
    random_problem,
)

__all__ = [
    "MULTIHOP_FORMAT",
    "MULTIHOP_PLAN_FORMAT",
    "MULTIHOP_VERSION",
    "MultihopError",
    "MultihopPlan",
    "MultihopProblem",
    "Stage",
    "StageTables",
    "best_micro_batch",
    "brute_force",
    "diagnose",
    "evaluate_placement",
    "load_problem",
    "optimize_placement",
    "pipeline_latency",
    "place",
    "placement_stages",
    "problem_from_dict",
    "random_problem",
    "save_plan",
    "single_hop",
    "stage_tables",
]
