"""Round planning details: partial batches, the clients' data-loading time."""

import pytest

from flsplit.model.costs import PartCosts
from flsplit.plan import evaluate
from flsplit.server.node_profiles import transfer_ms
from flsplit.server.round_planner import RoundPlanner


def test_a_partial_mean_batch_scales_the_transfers():
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 400_000, 100_000, 12.0)
    planner = RoundPlanner(costs, lambda c, h: (2.0, 5.0), method="greedy", time_limit=0.2)
    planner.add_client(1)
    planner.add_helper(9)
    full = planner.instance([1], [9])
    planner.batch_fill[1] = 0.5
    half = planner.instance([1], [9])
    up_full = transfer_ms(400_000, 2.0, 5.0)
    up_half = transfer_ms(200_000, 2.0, 5.0)
    assert full.head_fwd_up[0, 0] == pytest.approx(5.0 + up_full)
    assert half.head_fwd_up[0, 0] == pytest.approx(5.0 + up_half)
    assert half.body_fwd[0, 0] == full.body_fwd[0, 0]
    # what the client measured is read with the same fill: compute is not mistaken for link
    planner.observe_client(1, 9, 7.0 + up_half, 30.0, 8.0 + up_half)
    assert planner.clients[1].head_fwd_ms == pytest.approx(7.0)
    assert planner.clients[1].head_bwd_ms == pytest.approx(8.0)


def _planner_with(load_ms, **kwargs):
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 400_000, 100_000, 12.0)
    planner = RoundPlanner(costs, lambda c, h: (2.0, 5.0), time_limit=0.2, **kwargs)
    planner.add_client(1)
    planner.add_helper(9)
    up1 = transfer_ms(400_000, 2.0, 5.0)
    planner.observe_client(1, 9, 7.0 + up1, 30.0, 8.0 + up1, load_ms=load_ms)
    return planner


@pytest.mark.parametrize("method", ["greedy", "auto", "balanced-fcfs", "random-fcfs"])
def test_a_slow_loader_lengthens_the_predicted_round_by_batches_times_its_load_time(method):
    fast, slow = _planner_with(0.0, method=method), _planner_with(600.0, method=method)
    batches = 7
    fast_plan = fast.plan(1, [1], [9], {1: batches})
    slow_plan = slow.plan(1, [1], [9], {1: batches})
    # stage 1 is the loader's time plus the head's forward and the upload ...
    assert slow_plan.instance.head_fwd_up[0, 0] == pytest.approx(
        fast_plan.instance.head_fwd_up[0, 0] + 600.0
    )
    # ... which the plan's one-batch makespan (the shared evaluator) and the whole round's
    # prediction both count, once per batch
    assert evaluate(slow_plan.instance, slow_plan.plan).makespan == pytest.approx(
        evaluate(fast_plan.instance, fast_plan.plan).makespan + 600.0
    )
    assert slow_plan.prediction.makespan == pytest.approx(
        fast_plan.prediction.makespan + batches * 600.0
    )
    # loading is not compute: the client's measured compute times are the same
    assert slow.clients[1].head_fwd_ms == pytest.approx(fast.clients[1].head_fwd_ms)
    assert slow.clients[1].factor == pytest.approx(fast.clients[1].factor)


def test_the_load_time_is_smoothed_and_survives_a_checkpoint():
    planner = _planner_with(600.0, method="greedy")
    up1 = transfer_ms(400_000, 2.0, 5.0)
    planner.observe_client(1, 9, 7.0 + up1, 30.0, 8.0 + up1, load_ms=100.0)
    assert planner.clients[1].load_ms == pytest.approx(0.6 * 100.0 + 0.4 * 600.0)
    restored = RoundPlanner(planner.costs, planner.link)
    restored.load_state_dict(planner.state_dict())
    assert restored.clients[1].load_ms == planner.clients[1].load_ms


def _planner_for_memory(helper_mib: float) -> RoundPlanner:
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 400_000, 100_000, 12.0)  # body: 12 MiB
    planner = RoundPlanner(costs, lambda c, h: (2.0, 5.0), method="auto", time_limit=0.2)
    for client in (1, 2, 3):
        planner.add_client(client)
    planner.add_helper(9, memory_mib=helper_mib)
    planner.add_helper(8, memory_mib=helper_mib)
    return planner


def test_clients_whose_bodies_do_not_fit_sit_the_round_out():
    planner = _planner_for_memory(13.0)  # one body per helper: 2 of 3 clients fit
    plan = planner.plan(1, [1, 2, 3], [9, 8], {1: 2, 2: 2, 3: 2})
    assert plan.left_out == [3] and "memory" in plan.left_out_reason
    assert sorted(plan.helper_of()) == [1, 2]
    assert sorted(plan.helper_of().values()) == [8, 9]
    everyone = _planner_for_memory(24.0).plan(1, [1, 2, 3], [9, 8], {1: 2, 2: 2, 3: 2})
    assert everyone.left_out == [] and sorted(everyone.helper_of()) == [1, 2, 3]


def test_no_client_fitting_any_helper_is_said_clearly():
    planner = _planner_for_memory(5.0)
    with pytest.raises(RuntimeError, match="no sampled client can be planned: a body needs 12"):
        planner.plan(1, [1, 2, 3], [9, 8], {1: 2, 2: 2, 3: 2})


def _late_starter_round(method):
    """Client 1 started 1.3 s late last round; client 2's link to helper 9 is slow, to
    helper 8 fast (client 1's are both fast, helper 8's a little faster). Each helper
    holds one body. Both run 12 batches."""
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 50_000, 10_000, 12.0)
    links = {(1, 8): (30.0, 5.0), (1, 9): (25.0, 5.0), (2, 8): (40.0, 5.0), (2, 9): (1.0, 5.0)}
    planner = RoundPlanner(costs, lambda c, h: links[(c, h)], method=method, time_limit=0.5)
    for client in (1, 2):
        planner.add_client(client)
    for helper in (8, 9):
        planner.add_helper(helper, memory_mib=12.0)
    planner.clients[1].start_offset_ms = 1300.0
    return planner.plan(2, [1, 2], [8, 9], {1: 12, 2: 12})


@pytest.mark.parametrize("method", ["greedy", "auto"])
def test_a_late_start_weighs_on_the_one_batch_plan_by_its_share_of_the_round(method):
    # Added whole to one batch, the 1.3 s offset made any plan whose one batch ended by
    # then as good as any other: client 2 went to its 1 Mbit/s link, 12 slow batches.
    round_plan = _late_starter_round(method)
    assert round_plan.helper_of() == {1: 9, 2: 8}
    # the round is still predicted with client 1 starting 1.3 s late
    first = min(t.start for t in round_plan.prediction.tasks if t.client == "c1")
    assert first > 1300.0
    assert round_plan.prediction.makespan < 12 * transfer_ms(50_000, 1.0, 5.0)
