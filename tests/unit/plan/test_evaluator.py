"""Evaluator: hand-computed timelines, invariants and infeasible plans."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings

from flsplit.plan.evaluator import evaluate
from flsplit.plan.gantt import gantt
from flsplit.plan.instance import Instance
from flsplit.plan.plan import Plan, PlanError, load_plan, save_plan
from flsplit.plan.scheduling.baselines import random_fcfs

from .conftest import make_instance, small_instances, uniform


def two_clients_one_helper() -> Instance:
    return uniform(2, 1, head_fwd_up=0, body_fwd=2, tail_fwd_bwd=1, body_bwd=2,
                   down_head_bwd=0)


def plan_for(order: list[tuple[str, str]], helper: str = "h0") -> Plan:
    clients = {c for c, _ in order}
    return Plan(assignment=dict.fromkeys(clients, helper), order={helper: order})


def test_hand_computed_orders() -> None:
    instance = two_clients_one_helper()
    # f0 [0,2] f1 [2,4] b0 ready 3 -> [4,6], b1 ready 5 -> [6,8]
    interleaved = plan_for([("c0", "fwd"), ("c1", "fwd"), ("c0", "bwd"), ("c1", "bwd")])
    assert evaluate(instance, interleaved).makespan == 8
    # f0 [0,2] b0 ready 3 -> [3,5] f1 [5,7] b1 ready 8 -> [8,10]
    serial = plan_for([("c0", "fwd"), ("c0", "bwd"), ("c1", "fwd"), ("c1", "bwd")])
    evaluation = evaluate(instance, serial)
    assert evaluation.makespan == 10
    helper_spans = [(s.client, s.stage, s.start, s.end) for s in evaluation.timeline
                    if s.resource == "h0"]
    assert helper_spans == [("c0", "fwd", 0, 2), ("c0", "bwd", 3, 5), ("c1", "fwd", 5, 7),
                            ("c1", "bwd", 8, 10)]
    assert evaluation.client_finish == {"c0": 5, "c1": 10}


def test_single_client_is_its_critical_path() -> None:
    instance = make_instance({"head_fwd_up": [[3, 1]], "body_fwd": [[2, 9]],
                              "tail_fwd_bwd": [[4, 1]], "body_bwd": [[5, 9]],
                              "down_head_bwd": [[6, 1]]})
    plan = Plan({"c0": "h0"}, {"h0": [("c0", "fwd"), ("c0", "bwd")], "h1": []})
    assert evaluate(instance, plan).makespan == 3 + 2 + 4 + 5 + 6


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        (Plan({"c0": "h0"}, {"h0": [("c0", "fwd"), ("c0", "bwd")]}), "assignment.c1"),
        (plan_for([("c0", "bwd"), ("c0", "fwd"), ("c1", "fwd"), ("c1", "bwd")]),
         "order.h0[0]"),
        (plan_for([("c0", "fwd"), ("c0", "fwd"), ("c1", "fwd"), ("c1", "bwd")]),
         "order.h0[1]"),
        (plan_for([("c0", "fwd"), ("c1", "fwd"), ("c1", "bwd")]), "order.h0"),
        (plan_for([("c0", "fwd"), ("c1", "up"), ("c0", "bwd"), ("c1", "bwd")]),
         "order.h0[1]"),
        (Plan({"c0": "h0", "c1": "h9"}, {"h0": []}), "assignment.c1"),
    ],
)
def test_infeasible_plans_rejected(plan: Plan, field: str) -> None:
    with pytest.raises(PlanError) as info:
        evaluate(two_clients_one_helper(), plan)
    assert info.value.field == field


def test_memory_violation_rejected() -> None:
    instance = make_instance(
        {name: [[1, 1]] * 2 for name in ("head_fwd_up", "body_fwd", "tail_fwd_bwd",
                                         "body_bwd", "down_head_bwd")},
        memory=[2.0, 2.0], capacity=[3.0, 3.0],
    )
    plan = plan_for([("c0", "fwd"), ("c1", "fwd"), ("c0", "bwd"), ("c1", "bwd")])
    plan.order["h1"] = []
    with pytest.raises(PlanError, match="memory") as info:
        evaluate(instance, plan)
    assert info.value.field == "assignment->h0"


@settings(max_examples=40, deadline=None)
@given(small_instances())
def test_evaluator_invariants(instance: Instance) -> None:
    plan = random_fcfs(instance, seed=1)
    evaluation = evaluate(instance, plan)
    assert evaluation.makespan == pytest.approx(plan.makespan)
    assert evaluation.makespan == max(evaluation.client_finish.values())
    h_index = {h: j for j, h in enumerate(instance.helper_ids)}
    k_index = {c: k for k, c in enumerate(instance.client_ids)}
    spans = {(s.client, s.stage): s for s in evaluation.timeline}
    for client, helper in plan.assignment.items():
        k, h = k_index[client], h_index[helper]
        fwd, bwd = spans[client, "fwd"], spans[client, "bwd"]
        assert fwd.start >= instance.head_fwd_up[k, h] - 1e-9
        assert fwd.end - fwd.start == pytest.approx(instance.body_fwd[k, h])
        assert bwd.start >= fwd.end + instance.tail_fwd_bwd[k, h] - 1e-9
        assert bwd.end - bwd.start == pytest.approx(instance.body_bwd[k, h])
        finish = evaluation.client_finish[client]
        assert finish == pytest.approx(bwd.end + instance.down_head_bwd[k, h])
        assert finish >= instance.critical_paths()[k, h] - 1e-9
    for tasks in plan.order.values():
        helper_spans = [spans[c, kind] for c, kind in tasks]
        for before, after in itertools.pairwise(helper_spans):
            assert after.start >= before.end - 1e-9  # one task at a time, in list order


def test_plan_json_and_gantt(tmp_path: Path) -> None:
    instance = two_clients_one_helper()
    plan = random_fcfs(instance)
    save_plan(plan, tmp_path / "p.json")
    loaded = load_plan(tmp_path / "p.json")
    assert loaded.assignment == plan.assignment and loaded.order == plan.order
    assert evaluate(instance, loaded).makespan == plan.makespan
    gantt(evaluate(instance, plan).timeline, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 1000
