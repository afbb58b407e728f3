"""Solvers and bounds: feasibility, bound validity, optimality on tiny instances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from flsplit.plan.evaluator import evaluate
from flsplit.plan.generator import random_instance
from flsplit.plan.instance import Instance
from flsplit.plan.plan import check_plan
from flsplit.plan.scheduling.bounds import critical_path_bound, load_bound, lower_bound
from flsplit.plan.scheduling.relaxation import relaxation_bound
from flsplit.plan.scheduling.solve import METHODS, solve
from tests.unit.plan.conftest import make_instance, small_instances, uniform

HEURISTIC_LIMIT = 0.2
EXACT_LIMIT = 2.0


def ones_and_tens(fast: list[list[int]]) -> dict[str, list[list[int]]]:
    """Every stage 1 where ``fast`` is 1, else 10."""
    matrix = [[1 if f else 10 for f in row] for row in fast]
    return dict.fromkeys(
        ("head_fwd_up", "body_fwd", "tail_fwd_bwd", "body_bwd", "down_head_bwd"), matrix)


TINY_OPTIMA: list[tuple[str, Instance, float]] = [
    # one helper, two identical clients: f0 f1 b0 b1 keeps the helper busy from 0 to 8
    ("interleave", uniform(2, 1, head_fwd_up=0, body_fwd=2, tail_fwd_bwd=1, body_bwd=2,
                           down_head_bwd=0), 8.0),
    # each client has one fast link: the link-aware assignment gives 5 (random may give 50)
    ("links", make_instance(ones_and_tens([[1, 0], [0, 1]])), 5.0),
    # four equal clients on two helpers: 2 each, f f b b back to back = 12
    ("load", uniform(4, 2, head_fwd_up=0, body_fwd=3, tail_fwd_bwd=0, body_bwd=3,
                     down_head_bwd=0), 12.0),
    # the fast helper holds only two bodies: two there (finish 6) and one slow one (10)
    ("memory", make_instance(
        {name: [[1, 2]] * 3 for name in ("head_fwd_up", "body_fwd", "tail_fwd_bwd",
                                         "body_bwd", "down_head_bwd")},
        memory=[1.0, 1.0, 1.0], capacity=[2.0, 3.0]), 10.0),
    # waiting pays: c1 arrives at 1 with a long tail; serving c0's forward first (non-delay)
    # delays c1 to 4 -> 4+1+0+1+20 = 26; idling until 1 gives c1 1..2, 2..3 then c0
    ("idle", make_instance({
        "head_fwd_up": [[0], [1]], "body_fwd": [[3], [1]], "tail_fwd_bwd": [[0], [0]],
        "body_bwd": [[1], [1]], "down_head_bwd": [[0], [20]]}), 23.0),
]


@pytest.mark.parametrize(("name", "instance", "optimum"), TINY_OPTIMA,
                         ids=[t[0] for t in TINY_OPTIMA])
def test_tiny_instances_hand_computed_optimum(name: str, instance: Instance,
                                              optimum: float) -> None:
    plan = solve(instance, "exact", time_limit=EXACT_LIMIT)
    assert plan.makespan == pytest.approx(optimum)
    assert plan.proven_optimal
    assert plan.lower_bound == pytest.approx(optimum)
    assert solve(instance, "auto", time_limit=EXACT_LIMIT).makespan == pytest.approx(optimum)


def test_bounds_on_hand_instances() -> None:
    _, load, _ = TINY_OPTIMA[2]
    assert load_bound(load) == pytest.approx(12.0)
    assert critical_path_bound(load) == pytest.approx(6.0)
    _, links, _ = TINY_OPTIMA[1]
    assert critical_path_bound(links) == pytest.approx(5.0)


@settings(max_examples=25, deadline=None)
@given(small_instances())
def test_every_method_feasible_and_bounded(instance: Instance) -> None:
    plans = {}
    for method in METHODS:
        limit = EXACT_LIMIT if method == "exact" else HEURISTIC_LIMIT
        plan = solve(instance, method, time_limit=limit, seed=3)
        check_plan(instance, plan)  # each client once, memory, tasks once, fwd before bwd
        assert plan.makespan == evaluate(instance, plan).makespan
        assert plan.method == method
        assert plan.lower_bound is not None
        assert plan.lower_bound <= plan.makespan + 1e-9
        plans[method] = plan
    bound = lower_bound(instance)
    exact = plans["exact"]
    assert bound <= exact.makespan + 1e-9
    assert exact.lower_bound <= exact.makespan + 1e-9
    if exact.proven_optimal:
        for method, plan in plans.items():
            assert exact.makespan <= plan.makespan + 1e-9, method
            assert plan.lower_bound <= exact.makespan + 1e-9, method
        relaxed = relaxation_bound(instance, exact.makespan, time_limit=1.0)
        assert bound - 1e-9 <= relaxed <= exact.makespan + 1e-9
    auto = plans["auto"]
    assert auto.makespan <= plans["balanced-fcfs"].makespan + 1e-9
    assert auto.makespan <= plans["random-fcfs"].makespan + 1e-9


def test_non_integer_instance_exact_is_consistent() -> None:
    instance = random_instance(5, 2, seed=4, integer=False)
    exact = solve(instance, "exact", time_limit=EXACT_LIMIT)
    greedy = solve(instance, "greedy", time_limit=HEURISTIC_LIMIT)
    check_plan(instance, exact)
    assert exact.lower_bound <= exact.makespan + 1e-9
    assert exact.lower_bound <= greedy.makespan + 1e-9
    assert exact.makespan <= greedy.makespan + 1e-6


def test_large_instance_greedy_is_fast_and_beats_baselines() -> None:
    instance = random_instance(300, 20, seed=0, integer=False, max_time=100)
    plan = solve(instance, "auto", time_limit=1.0)
    assert plan.solve_time < 3.0
    check_plan(instance, plan)
    assert plan.makespan <= solve(instance, "balanced-fcfs").makespan + 1e-9
    assert plan.info["auto_choice"] in ("greedy", "decomposition")


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        solve(uniform(1, 1, head_fwd_up=1, body_fwd=1, tail_fwd_bwd=1, body_bwd=1,
                      down_head_bwd=1), "magic")


def test_seeded_baseline_reproducible() -> None:
    instance = random_instance(12, 3, seed=7)
    first = solve(instance, "random-fcfs", seed=5)
    second = solve(instance, "random-fcfs", seed=5)
    assert first.assignment == second.assignment
    assert np.isclose(first.makespan, second.makespan)
