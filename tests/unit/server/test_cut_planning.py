"""Cut pairs chosen every round from live measurements (run config ``cut-candidates``)."""

import numpy as np
import pytest
from quickstart.task import TASK

from flsplit.model.costs import CutCosts, cut_costs, cut_pairs
from flsplit.plan import check_plan, evaluate
from flsplit.server.node_profiles import transfer_ms
from flsplit.server.round_planner import RoundPlanner

#: Four segments "l0", "a", "b", "c" (a cut name starts its segment); every segment takes
#: 10 ms forward and 10 ms backward on the server; activations shrink along the model.
PROFILE = {
    "model": "toy",
    "layers": [
        {"name": "l0", "activation_kib": 64.0, "weights_kib": 1.0, "memory_kib": 100.0},
        {"name": "a", "activation_kib": 32.0, "weights_kib": 1.0, "memory_kib": 200.0},
        {"name": "b", "activation_kib": 16.0, "weights_kib": 1.0, "memory_kib": 300.0},
        {"name": "c", "activation_kib": 8.0, "weights_kib": 1.0, "memory_kib": 100.0},
    ],
    "devices": {
        "server": {
            "forward_ms": [10.0, 10.0, 10.0, 10.0],
            "backward_ms": [8.0, 8.0, 8.0, 8.0],
            "update_ms": [2.0, 2.0, 2.0, 2.0],
        }
    },
}
PAIRS = ["a,c", "b,c", "a,b"]


def _costs(default="a,c"):
    return CutCosts.from_profile(PROFILE, PAIRS, default)


def _client_work(costs, pair):
    part = costs.part_costs(pair)
    return part.head_fwd_ms + part.head_bwd_ms + part.tail_ms


def _planner(link=lambda c, h: (1000.0, 0.0), method="auto", **kwargs):
    costs = _costs()
    return RoundPlanner(
        costs.part_costs(costs.default),
        link,
        method=method,
        time_limit=1.0,
        cut_costs=costs,
        **kwargs,
    )


def test_cut_costs_of_any_pair_come_from_the_segments():
    costs = _costs()
    assert costs.boundaries == ("a", "b", "c")
    assert costs.pair("a,c") == (1, 3) and costs.pair("b,c") == (2, 3)
    part = costs.part_costs("b,c")
    assert part.head_fwd_ms == pytest.approx(20.0) and part.head_bwd_ms == pytest.approx(20.0)
    assert part.body_fwd_ms == pytest.approx(10.0) and part.body_bwd_ms == pytest.approx(10.0)
    assert part.tail_ms == pytest.approx(20.0)
    assert part.cut1_bytes == 32 * 1024 and part.cut2_bytes == 16 * 1024
    assert part.body_memory_mib == pytest.approx(300 / 1024)
    assert costs.client_memory_mib("a,c") == pytest.approx(200 / 1024)
    with pytest.raises(ValueError, match="in execution order"):
        costs.pair("c,a")
    with pytest.raises(ValueError, match="two of the profiled cuts"):
        CutCosts.from_profile(PROFILE, ["a,x"], "a,c")


def test_a_slow_client_on_a_fast_link_gets_less_client_work_than_fast_clients():
    planner = _planner()
    slow, fast = 1, [2, 3, 4]
    planner.add_client(slow, compute_factor=20.0)
    for client in fast:
        planner.add_client(client, compute_factor=1.0)
    planner.add_helper(10, compute_factor=5.0)
    plan = planner.plan(1, [slow, *fast], [10], dict.fromkeys([slow, *fast], 4))

    assert plan.plan.method.startswith("cuts-")
    cuts = plan.cuts_of()
    assert set(cuts) == {slow, *fast} and set(cuts.values()) <= set(PAIRS)
    costs = planner.cut_costs
    slow_work = _client_work(costs, cuts[slow])
    assert slow_work == min(_client_work(costs, p) for p in PAIRS)
    assert all(_client_work(costs, cuts[c]) > slow_work for c in fast)
    assert sum(plan.cut_counts().values()) == 4 and len(plan.cut_counts()) >= 2

    # The plan is feasible on the instance of the chosen cuts and judged by the evaluator.
    check_plan(plan.instance, plan.plan)
    evaluation = evaluate(plan.instance, plan.plan)
    assert evaluation.makespan == pytest.approx(plan.plan.makespan)
    assert plan.instance.meta["cuts"] == {
        f"c{c}": list(costs.pair(pair)) for c, pair in cuts.items()
    }
    assert plan.prediction.makespan >= evaluation.makespan - 1e-6


def test_a_client_never_gets_a_pair_whose_head_and_tail_exceed_its_memory():
    planner = _planner()
    costs = planner.cut_costs
    # Only "a,c" fits (200 KiB); "b,c" and "a,b" need 400 KiB.
    planner.add_client(1, compute_factor=1.0, memory_mib=costs.client_memory_mib("a,c"))
    planner.add_client(2, compute_factor=1.0)
    planner.add_client(3, compute_factor=1.0, memory_mib=0.1)  # holds no candidate
    planner.add_helper(10, compute_factor=5.0)
    problem = planner.cut_problem([1, 2], [10])
    assert problem.allowed.tolist() == [[True, False, False], [True, True, True]]
    plan = planner.plan(1, [1, 2, 3], [10], {1: 2, 2: 2, 3: 2})
    assert plan.cuts_of()[1] == "a,c"
    assert plan.left_out == [3] and 3 not in plan.helper_of()


def test_baselines_keep_the_default_cut():
    planner = _planner(method="balanced-fcfs")
    assert not planner.chooses_cuts
    planner.add_client(1, compute_factor=20.0)
    planner.add_client(2, compute_factor=1.0)
    planner.add_helper(10, compute_factor=5.0)
    plan = planner.plan(1, [1, 2], [10], {1: 2, 2: 2})
    assert plan.cuts == {} and plan.plan.method == "balanced-fcfs"
    assert plan.instance.body_fwd[0, 0] == pytest.approx(5.0 * 20.0)  # body of "a,c"


def _stage_times(planner, pair):
    problem = planner.cut_problem([1], [10])
    index = problem.pair_index(planner.cut_costs.pair(pair))
    return {name: float(values[0, 0, index]) for name, values in problem.stages.items()}


def test_a_factor_learned_at_one_cut_scales_the_times_at_another_cut():
    link = lambda c, h: (8.0, 2.0)  # noqa: E731
    fresh, learned = _planner(link), _planner(link)
    for planner in (fresh, learned):
        planner.add_client(1, compute_factor=1.0)
        planner.add_helper(10, compute_factor=1.0)
    costs = learned.cut_costs

    # The client runs "a,c" three times slower than the server; the helper twice, on a
    # round mixing "a,c" and "b,c" bodies.
    at = costs.part_costs("a,c")
    up1, up2 = (transfer_ms(b, 8.0, 2.0) for b in (at.cut1_bytes, at.cut2_bytes))
    learned.observe_client(
        1,
        10,
        3 * at.head_fwd_ms + up1,
        3 * at.tail_ms + 2 * up2,
        3 * at.head_bwd_ms + up1,
        cuts="a,c",
    )
    served = {"a,c": 3, "b,c": 1}
    bodies = [costs.part_costs(p) for p in ("a,c", "a,c", "a,c", "b,c")]
    learned.observe_helper(
        10,
        2 * np.mean([b.body_fwd_ms for b in bodies]),
        2 * np.mean([b.body_bwd_ms for b in bodies]),
        served=served,
    )
    assert learned.clients[1].factor == pytest.approx(3.0)
    assert learned.helpers[10].factor == pytest.approx(2.0)

    other = costs.part_costs("a,b")
    transfers = {
        "head_fwd_up": transfer_ms(other.cut1_bytes, 8.0, 2.0),
        "tail_fwd_bwd": 2 * transfer_ms(other.cut2_bytes, 8.0, 2.0),
        "down_head_bwd": transfer_ms(other.cut1_bytes, 8.0, 2.0),
        "body_fwd": 0.0,
        "body_bwd": 0.0,
    }
    before, after = _stage_times(fresh, "a,b"), _stage_times(learned, "a,b")
    for stage in ("head_fwd_up", "tail_fwd_bwd", "down_head_bwd"):
        compute = after[stage] - transfers[stage]
        assert compute == pytest.approx(3.0 * (before[stage] - transfers[stage])), stage
    assert after["tail_fwd_bwd"] - transfers["tail_fwd_bwd"] == pytest.approx(3.0 * other.tail_ms)
    for stage in ("body_fwd", "body_bwd"):
        assert after[stage] == pytest.approx(2.0 * before[stage]), stage

    # A second measurement (at "b,c", five times slower) is smoothed in like the profiles.
    at = costs.part_costs("b,c")
    up1, up2 = (transfer_ms(b, 8.0, 2.0) for b in (at.cut1_bytes, at.cut2_bytes))
    learned.observe_client(
        1,
        10,
        5 * at.head_fwd_ms + up1,
        5 * at.tail_ms + 2 * up2,
        5 * at.head_bwd_ms + up1,
        cuts="b,c",
    )
    factor = 0.6 * 5.0 + 0.4 * 3.0
    assert learned.clients[1].factor == pytest.approx(factor)
    again = _stage_times(learned, "a,b")
    assert again["head_fwd_up"] - transfers["head_fwd_up"] == pytest.approx(
        factor * other.head_fwd_ms
    )


def test_cut_candidates_are_parsed_and_checked_on_the_model():
    config = TASK.config({})
    model, example = TASK.model_fn(config), TASK.example_input(config)
    default = TASK.split(config).cuts
    pairs = cut_pairs(model, example, "conv2,fc1; 2,fc2 ;conv2,fc1", default)
    assert pairs == ["conv2,fc1", "bn2,fc2"]
    everything = cut_pairs(model, example, "all", default)
    assert everything[0] == ",".join(default) and len(everything) == len(set(everything)) == 36
    with pytest.raises(ValueError, match="item 'conv2': a cut pair needs exactly two"):
        cut_pairs(model, example, "conv2", default)
    with pytest.raises(ValueError, match="item 'nope,fc2'"):
        cut_pairs(model, example, "nope,fc2", default)


def test_server_profiles_the_segments_of_the_candidates_and_refuses_empty_bodies():
    config = TASK.config({"cut-candidates": "conv2,fc1;fc1,fc2", "batch-size": 8})
    split = TASK.split(config)
    costs = cut_costs(TASK, config, split)
    assert costs.candidates == ("conv2,fc1", "fc1,fc2")
    assert costs.boundaries == ("relu1", "conv2", "fc1", "fc2")  # plus the default pair's
    assert costs.default == ",".join(split.cuts)
    for pair in costs.candidates:
        part = costs.part_costs(pair)
        assert min(part.head_fwd_ms, part.body_fwd_ms, part.body_bwd_ms, part.tail_ms) > 0
        assert costs.body_weights_kib(pair) > 0
    assert costs.part_costs("conv2,fc1").cut1_bytes == 8 * 16 * 8 * 8 * 4  # conv1's output
    # "relu3" alone would be the body: nothing for the helper to train
    with pytest.raises(ValueError, match="item 'relu3,fc2': its body has no parameters"):
        cut_costs(TASK, {**config, "cut-candidates": "relu3,fc2"}, split)
    everything = cut_costs(TASK, {**config, "cut-candidates": "all"}, split)
    assert "relu3,fc2" not in everything.candidates and "relu1,fc2" in everything.candidates


def test_a_clients_load_time_adds_to_its_stage_1_at_every_cut_and_not_to_its_factor():
    link = lambda c, h: (8.0, 2.0)  # noqa: E731
    fast, slow = _planner(link), _planner(link)
    for planner, load in ((fast, 0.0), (slow, 400.0)):
        planner.add_client(1, compute_factor=1.0)
        planner.add_helper(10, compute_factor=1.0)
        at = planner.cut_costs.part_costs("a,c")
        up1, up2 = (transfer_ms(b, 8.0, 2.0) for b in (at.cut1_bytes, at.cut2_bytes))
        planner.observe_client(
            1, 10, 3 * at.head_fwd_ms + up1, 3 * at.tail_ms + 2 * up2,
            3 * at.head_bwd_ms + up1, cuts="a,c", load_ms=load,
        )
    assert slow.clients[1].factor == pytest.approx(fast.clients[1].factor) == pytest.approx(3.0)
    for pair in PAIRS:
        before, after = _stage_times(fast, pair), _stage_times(slow, pair)
        assert after["head_fwd_up"] == pytest.approx(before["head_fwd_up"] + 400.0), pair
        for stage in ("body_fwd", "tail_fwd_bwd", "body_bwd", "down_head_bwd"):
            assert after[stage] == pytest.approx(before[stage]), (pair, stage)
    batches = 5
    fast_plan = fast.plan(1, [1], [10], {1: batches})
    slow_plan = slow.plan(1, [1], [10], {1: batches})
    assert slow_plan.cuts_of() == fast_plan.cuts_of()
    assert evaluate(slow_plan.instance, slow_plan.plan).makespan == pytest.approx(
        evaluate(fast_plan.instance, fast_plan.plan).makespan + 400.0
    )
    assert slow_plan.prediction.makespan == pytest.approx(
        fast_plan.prediction.makespan + batches * 400.0
    )
