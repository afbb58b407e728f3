"""Round prediction: repeated batches under the planned priorities, work-conserving."""

import numpy as np
import pytest

from flsplit.plan import Instance, Plan, random_instance, solve
from flsplit.plan.scheduling.rounds import predict_round


def _instance(stages, helpers=1):
    k = len(stages)
    grids = [np.array([[s[i]] * helpers for s in stages], dtype=float) for i in range(5)]
    return Instance(
        client_ids=[f"c{i}" for i in range(k)],
        helper_ids=[f"h{j}" for j in range(helpers)],
        head_fwd_up=grids[0],
        body_fwd=grids[1],
        tail_fwd_bwd=grids[2],
        body_bwd=grids[3],
        down_head_bwd=grids[4],
        body_memory=np.ones(k),
        helper_memory=np.full(helpers, 100.0),
    )


def test_one_client_runs_its_batches_back_to_back():
    instance = _instance([(1, 2, 3, 4, 5)])
    plan = Plan({"c0": "h0"}, {"h0": [("c0", "fwd"), ("c0", "bwd")]})
    prediction = predict_round(instance, plan, [3])
    assert prediction.makespan == pytest.approx(45.0)
    assert [t.kind for t in prediction.tasks] == ["fwd", "bwd"] * 3


def test_priority_decides_between_ready_tasks_and_the_helper_never_idles():
    # both forwards are ready at t=1; c1 has priority; c0 runs while c1 computes its tail
    instance = _instance([(1, 2, 10, 2, 1), (1, 2, 10, 2, 1)])
    order = [("c1", "fwd"), ("c0", "fwd"), ("c1", "bwd"), ("c0", "bwd")]
    plan = Plan({"c0": "h0", "c1": "h0"}, {"h0": order})
    prediction = predict_round(instance, plan, [1, 1])
    assert [(t.client, t.kind, t.start) for t in prediction.tasks] == [
        ("c1", "fwd", 1.0),
        ("c0", "fwd", 3.0),
        ("c1", "bwd", 13.0),
        ("c0", "bwd", 15.0),
    ]
    assert prediction.finish == {"c1": 16.0, "c0": 18.0}


def test_more_batches_never_shorten_the_round():
    instance = random_instance(6, 2, seed=3)
    plan = solve(instance, method="greedy", time_limit=1.0, seed=0)
    one = predict_round(instance, plan, [1] * 6).makespan
    three = predict_round(instance, plan, [3] * 6).makespan
    assert one <= three <= 3 * one + 1e-9
    assert one > 0


def test_batch_counts_must_match_the_clients():
    instance = _instance([(1, 1, 1, 1, 1)])
    with pytest.raises(ValueError, match="1 clients"):
        predict_round(instance, Plan({"c0": "h0"}, {"h0": []}), [1, 2])
