"""Helper chains planned every round: the segment costs, the round planner, and the
strategy's messages (per-client routes, cuts and micro-batch counts)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from flsplit.config import RunConfig
from flsplit.model.segment_costs import SegmentCosts
from flsplit.model.splitting import parse_cuts, split_model
from flsplit.model.zoo import SmallCNN
from flsplit.plan.multihop.chain_evaluation import evaluate_chain
from flsplit.plan.multihop.chain_planner import judge_routes
from flsplit.plan.multihop.chain_problem import ChainRoute
from flsplit.plan.multihop.evaluation import placement_stages
from flsplit.protocol import (
    ARRAYS,
    BACKWARD,
    CLIENT_TRAIN,
    CONFIG,
    FORWARD,
    HELPER_TRAIN,
    ROLE_CLIENT,
    ROLE_HELPER,
    ClientRound,
    HelperRound,
)
from flsplit.server.chain_planning import (
    MICRO_BATCH_OVERHEAD_MS,
    ChainRoundPlanner,
    stage_timeline,
)
from flsplit.server.modes import check_planned_chains
from strategies.chain_planned import ChainPlannedSplitStrategy
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode

MIB = 1024.0
#: SmallCNN's candidate cuts, each layer named after the cut before it (profile_model)
NAMES = ["conv1", "relu1", "conv2", "bn2", "relu2", "pool", "flatten", "fc1", "relu3", "fc2"]
WEIGHTS = [0.6, 0.0, 18.0, 0.3, 0.0, 0.0, 0.0, 128.0, 0.0, 2.5]
#: merged segments: [conv1] [relu1 conv2] [bn2] [relu2 .. fc1] [relu3 fc2]
MEMORY = [10, 0, 200, 200, 0, 0, 0, 200, 0, 10]  # MiB


def _profile(memory=MEMORY, forward=1.0):
    return {
        "model": "small-cnn",
        "layers": [
            {"name": n, "activation_kib": 64.0, "weights_kib": w, "memory_kib": m * MIB}
            for n, w, m in zip(NAMES, WEIGHTS, memory, strict=True)
        ],
        "devices": {"this-machine": {
            "forward_ms": [forward] * len(NAMES),
            "backward_ms": [2 * forward] * len(NAMES),
            "update_ms": [0.1] * len(NAMES),
        }},
    }


def _costs(**kwargs):
    return SegmentCosts.from_profile(_profile(**kwargs), batch_size=32)


def _planner(helper_memory, client_memory=30.0, helpers=(1, 2, 3), clients=(21, 22),
             **kwargs):
    planner = ChainRoundPlanner(_costs(), lambda c, h: (100.0, 1.0), time_limit=0.3,
                                **kwargs)
    for h in helpers:
        planner.add_helper(h, 1.0, helper_memory)
    for c in clients:
        planner.add_client(c, 4.0, client_memory)
    return planner


def _costs_with_calls():
    # per layer: forward + backward 3 ms at 32 samples, 1.5 ms at 2: 1.4 ms per call and
    # 0.05 ms per sample (a small model, as the example's, is mostly fixed time per call)
    small = SegmentCosts.from_profile(_profile(forward=0.5), batch_size=2)
    return _costs().with_calls(small)


def test_a_second_profile_separates_each_segments_fixed_time_per_call():
    costs = _costs_with_calls()
    layers = [1, 2, 1, 4, 2]  # candidate layers per merged segment
    assert costs.call_ms() == pytest.approx([1.4 * n for n in layers])
    # the whole batch's time is unchanged: 32 samples plus one call
    assert costs.call_ms() + 32 * costs.sample_ms() == pytest.approx(
        [3.1 * n for n in layers])
    assert _costs().call_ms() == pytest.approx([0.0] * 5)


def _true_ms(costs, factor, start, stop, micro):
    """One batch of segments ``start:stop`` in ``micro`` calls on a node ``factor`` times
    slower than the server: what the node measures."""
    return factor * (32 * costs.sample_ms()[start:stop].sum()
                     + micro * costs.call_ms()[start:stop].sum())


def test_costs_learned_at_one_micro_batch_count_predict_other_counts_and_routes():
    # a client 6x and helpers 2x slower than the server (registered 4x and 1x): what one
    # round measures at its route and micro-batch count predicts every other route and
    # count, because each call's fixed time is charged per call, not folded into a
    # per-sample speed (one factor per node for whatever it runs)
    costs = _costs_with_calls()
    planner = ChainRoundPlanner(costs, lambda c, h: (100.0, 1.0), time_limit=0.3)
    for h in (1, 2, 3):
        planner.add_helper(h, 1.0, 4096.0)
    planner.add_client(21, 4.0, 30.0)
    plan = planner.plan(1, [21], [1, 2, 3], {21: 2})
    # the round ran (as if planned) a chain over helpers 1 and 2 in 4 micro-batches
    plan.routes[21], plan.positions[21], plan.micro_batches[21] = [1, 2], (1, 2, 4), 4
    q, micro = plan.positions[21], plan.micro_batches[21]
    compute = _true_ms(costs, 6.0, 0, q[0], 1) + _true_ms(costs, 6.0, q[-1], None, micro)
    planner.observe_client(21, plan, compute)
    for i, helper in enumerate(plan.routes[21]):
        busy = 2 * _true_ms(costs, 2.0, q[i], q[i + 1], micro)
        planner.observe_helper(helper, plan, {21: busy})
    p = planner.problem([21], [1, 2, 3]).clients[0]
    fixed = MICRO_BATCH_OVERHEAD_MS  # per micro-batch and stage, as planned
    for helpers, cuts in (([1], [1, 4]), ([2], [1, 4]), ([1, 2], [1, 3, 4])):
        stages, _ = placement_stages(p, helpers, cuts)
        head = sum(s.a for s in stages if s.serial)  # once per batch, outside the pipeline
        stages = [s for s in stages if not s.serial]
        for m in (1, 2, 8, 32):
            b = 32 // m
            assert head + m * stages[0].time(b) == pytest.approx(
                _true_ms(costs, 6.0, 0, 1, 1) + _true_ms(costs, 6.0, 4, None, m) + m * fixed)
            for i, stage in enumerate(stages[1:len(helpers) + 1]):
                assert m * stage.time(b) == pytest.approx(
                    _true_ms(costs, 2.0, cuts[i], cuts[i + 1], m) + m * fixed)


def test_segments_without_weights_are_merged_into_the_next_one():
    costs = _costs()
    assert costs.boundaries == ("relu1", "bn2", "relu2", "relu3")
    assert costs.num_segments == 5
    assert costs.profile.memory_kib.tolist() == [10 * MIB, 200 * MIB, 200 * MIB, 200 * MIB,
                                                 10 * MIB]
    assert all(w > 0 for w in costs.profile.weights_kib)
    assert costs.cut_names((1, 3, 4)) == "relu1,relu2,relu3"
    # a segment's time is the sum of its layers' (forward + backward + update) per sample
    assert costs.sample_ms()[3] == pytest.approx(4 * 3.1 / 32)


def test_clients_no_single_helper_can_hold_get_chains_that_fit_every_helper():
    """Bodies of 600 MiB, helpers of 450 MiB: every client's body is cut over two
    helpers; the plan is feasible for the shared judge and its cuts and orders are those
    the runtime is sent."""
    planner = _planner(helper_memory=450.0)
    plan = planner.plan(1, [21, 22], [1, 2, 3], {21: 3, 22: 2})
    assert not plan.left_out
    assert evaluate_chain(plan.problem, plan.plan) == pytest.approx(plan.plan.makespan)
    for client, route in plan.routes.items():
        assert len(route) >= 2 and route == sorted(route)
        names = plan.cuts[client].split(",")
        assert len(names) == len(route) + 1
        # the client's 30 MiB hold only the first and last segments
        assert names[0] == "relu1" and names[-1] == "relu3"
    for helper in {h for r in plan.routes.values() for h in r}:
        served = [c for c, r in plan.routes.items() if helper in r]
        order = plan.order_of(helper)
        assert {int(t.client) for t in order} == set(served)
        assert [t.kind for t in order] == [FORWARD, BACKWARD] * len(served)
    # the round: each client's batches times its one-batch finish, the slowest decides
    assert plan.predicted_ms == pytest.approx(max(
        plan.batches[c] * plan.finish_ms[c] for c in plan.routes))
    stages = stage_timeline(plan.problem, plan.plan)
    assert max(s["end"] for s in stages) == pytest.approx(plan.plan.makespan)
    hops = {s["resource"] for s in stages}
    assert {str(h) for r in plan.routes.values() for h in r} <= hops


def test_one_hop_stays_where_a_single_helper_holds_the_body_and_chains_do_not_pay():
    """Ample memory and helper-helper links of 0.01 Mbit/s: no client gets a chain."""
    planner = _planner(helper_memory=4096.0, helper_link=lambda a, b: (0.01, 50.0))
    plan = planner.plan(1, [21, 22], [1, 2, 3], {21: 2, 22: 2})
    assert all(len(route) == 1 for route in plan.routes.values())
    assert plan.to_dict()["chained_clients"] == 0


def test_routes_use_only_helper_links_that_exist():
    """Without any helper-helper link no chain is possible: bodies that need two helpers
    cannot be planned, and the error says so."""
    planner = _planner(helper_memory=450.0, helper_link=lambda a, b: None)
    with pytest.raises(RuntimeError, match="no sampled client can be planned"):
        planner.plan(1, [21, 22], [1, 2, 3], {21: 1, 22: 1})
    linked = _planner(helper_memory=450.0,
                      helper_link=lambda a, b: (50.0, 1.0) if {a, b} == {1, 3} else None,
                      clients=(21,))
    plan = linked.plan(1, [21], [1, 2, 3], {21: 1})
    assert plan.routes[21] == [1, 3]


def test_a_maximum_chain_length_merges_longer_routes():
    planner = _planner(helper_memory=4096.0, max_hops=2, clients=(21,))
    problem = planner.problem([21], [1, 2, 3])
    three = judge_routes(problem, [ChainRoute((1, 2, 3), (1, 2, 3, 4), 32)], "test")
    merged = planner._within_hops(problem, three)
    assert len(merged.routes[0].helpers) == 2
    assert merged.routes[0].cuts[0] == 1 and merged.routes[0].cuts[-1] == 4
    assert evaluate_chain(problem, merged) == pytest.approx(merged.makespan)


def test_speeds_are_learned_from_measured_helper_time():
    planner = _planner(helper_memory=4096.0, clients=(21,))
    plan = planner.plan(1, [21], [1, 2, 3], {21: 2})
    helper = plan.routes[21][0]
    q = plan.positions[21]
    predicted = planner.costs.sample_ms()[q[0]:q[1]].sum() * 32 * 2
    planner.observe_helper(helper, plan, {21: 3.0 * predicted})
    assert planner.helpers[helper].factor == pytest.approx(3.0)
    # a round 10 ms per micro-batch longer than planned: the client's overhead
    micro = plan.micro_batches[21]
    span = 2 * (plan.finish_ms[21] + 10.0 * micro)
    planner.observe_client(21, plan, None, start_offset_ms=40.0, span_ms=span)
    assert planner.clients[21].overhead_ms == pytest.approx(10.0)
    # the offset is averaged in from 0, even the first one measured
    assert planner.clients[21].start_offset_ms == pytest.approx(0.6 * 40.0)
    again = planner.plan(2, [21], [1, 2, 3], {21: 2})
    assert again.predicted_ms >= 24.0 + 2 * again.finish_ms[21] - 1e-6
    assert again.problem.clients[0].overhead_ms[0] == pytest.approx(12.0)
    # every round's first batch 300 ms beyond a steady one: averaged in (0.6), added
    # once per round
    planner.observe_client(21, plan, None, setup_ms=300.0)
    assert planner.clients[21].setup_ms == pytest.approx(180.0)
    third = planner.plan(3, [21], [1, 2, 3], {21: 2})
    offset = planner.clients[21].start_offset_ms
    assert third.predicted_ms == pytest.approx(offset + 180.0 + 2 * third.finish_ms[21])
    restored = _planner(helper_memory=1.0)
    restored.load_state_dict(planner.state_dict())
    assert restored.helpers[helper].factor == pytest.approx(3.0)


def test_slow_compute_is_learned_as_speed_not_also_as_per_micro_batch_overhead():
    # a client twice as slow as its profile: the span's excess is its measured compute,
    # so the overhead stays zero and the next plan, at any micro-batch count, predicts it
    planner = _planner(helper_memory=4096.0, clients=(21,))
    plan = planner.plan(1, [21], [1, 2, 3], {21: 2})
    q = plan.positions[21]
    per_sample = planner.costs.sample_ms()
    compute = float(per_sample[:q[0]].sum() + per_sample[q[-1]:].sum()) * 32 * 4.0
    span = 2 * (plan.finish_ms[21] + compute)
    planner.observe_client(21, plan, 2 * compute, span_ms=span)
    assert planner.clients[21].factor == pytest.approx(8.0)
    assert planner.clients[21].overhead_ms == pytest.approx(0.0)
    # what is left beyond the compute is still the overhead, per micro-batch
    planner.mark_provisional(21)
    planner.observe_client(21, plan, 2 * compute, span_ms=span + 2 * 6.0 * plan.micro_batches[21])
    assert planner.clients[21].overhead_ms == pytest.approx(6.0)


def test_planned_chains_refuse_cut_candidates_and_fixed_inner_cuts():
    base = {"planner": "auto", "chain-length": "auto"}
    assert RunConfig.parse(base).planned_chains
    assert RunConfig.parse({"planner": "auto", "chain-length": 3}).chain.length == 3
    for extra, word in (({"cut-candidates": "all"}, "cut-candidates"),
                        ({"chain-cuts": "fc1"}, "chain-cuts")):
        with pytest.raises(ValueError, match=word):
            check_planned_chains(RunConfig.parse(base, {"chain-length": 2}, extra))
    with pytest.raises(ValueError, match="needs a planner"):
        RunConfig.parse({"chain-length": "auto"})
    assert RunConfig.parse({"helper-links": "0-1, 1-2"}).helper_links == frozenset(
        {(0, 1), (1, 0), (1, 2), (2, 1)})
    with pytest.raises(ValueError, match="helper-links"):
        RunConfig.parse({"helper-links": "0-0"})


def _chain_strategy(helper_memory: float, helpers: tuple[int, ...]):
    """A SmallCNN cut at conv2,fc2, a chain planner for ``helpers`` and clients 21 and 22,
    and the planned chain strategy over them."""
    model = SmallCNN()
    example = torch.zeros(2, 1, 8, 8)
    parts = split_model(model, parse_cuts("conv2,fc2"), example)
    planner = _planner(helper_memory=helper_memory, helpers=helpers, clients=(21, 22))
    strategy = ChainPlannedSplitStrategy.from_split(
        parts, model, example,
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        planner=planner, batch_size=32,
    )
    return model, planner, strategy


def test_the_strategy_sends_every_client_its_planned_route_cuts_and_micro_batches(tmp_path):
    model, _, strategy = _chain_strategy(450.0, (11, 12, 13))
    nodes = {h: FakeNode(ROLE_HELPER) for h in (11, 12, 13)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=64, fill=1.0) for c in (21, 22)})
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    arrays = ArrayRecord(model.state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    plan = strategy.chain_plan
    assert all(len(r) >= 2 for r in plan.routes.values())
    clients = {m.metadata.dst_node_id: ClientRound.from_config(m.content[CONFIG])
               for m in messages if m.metadata.message_type == CLIENT_TRAIN}
    for client, round_ in clients.items():
        assert round_.cuts == plan.cuts[client]
        assert round_.micro_batches == plan.micro_batches[client]
        assert round_.helper_address == f"helper-{plan.routes[client][0]}:9000"
    for message in messages:
        if message.metadata.message_type != HELPER_TRAIN:
            continue
        helper = message.metadata.dst_node_id
        round_ = HelperRound.from_config(message.content[CONFIG])
        for served in round_.clients:
            route = plan.routes[int(served.client)]
            position = route.index(helper)
            assert served.cuts == plan.cuts[int(served.client)]
            assert served.piece == position + 1
            assert served.micro_batches == plan.micro_batches[int(served.client)]
            nxt = route[position + 1] if position + 1 < len(route) else None
            assert served.next_address == (f"helper-{nxt}:9000" if nxt else "")
        # the helper gets the weights of exactly the pieces it runs
        expected = sorted({k for s in round_.clients
                           for k in strategy.piece_keys(s.cuts)[s.piece - 1]})
        assert sorted(message.content[ARRAYS].keys()) == expected
    # the replies: every client's update assembled from its pieces, the round saved
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert arrays is not None
    assert strategy.round_records[1]["completed"] == [21, 22]
    entry = strategy.history[-1]
    assert entry["chains"]["routes"] == {str(c): r for c, r in plan.routes.items()}
    assert entry["predicted_ms"] == plan.predicted_ms and entry["measured_ms"] is not None
    # what each client measured is kept next to the prediction (FakeNode: 1 ms stages)
    assert set(entry["client_measured_ms"]) == {"21", "22"}
    assert entry["client_measured_ms"]["21"]["stage3"] == pytest.approx(1.0)
    assert "predicted_stages" not in strategy.state()["history"][-1]
    # the Gantt chart draws every hop, planned and measured
    from flsplit.plan.multihop.chain_gantt import chain_round_gantt

    png = chain_round_gantt(entry, tmp_path / "round-1.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_the_strategy_learns_micro_batched_clients_compute_from_their_stages():
    # micro-batched, a client's stages are its head and tail compute only (its transfers
    # run on other threads): the planner gets them whole; whole batches less transfers
    model, planner, strategy = _chain_strategy(4096.0, (11, 12))
    nodes = {h: FakeNode(ROLE_HELPER) for h in (11, 12)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=64, fill=1.0) for c in (21, 22)})
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    messages = list(strategy.configure_train(1, ArrayRecord(model.state_dict()),
                                             ConfigRecord({}), grid))
    plan = strategy.chain_plan
    plan.micro_batches[21], plan.micro_batches[22] = 2, 1
    seen = {}
    planner.observe_client = lambda node, _plan, compute, *args: seen.__setitem__(node, compute)
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert seen[21] == pytest.approx(3.0)  # FakeNode: three 1 ms stages
    assert seen[22] == pytest.approx(3.0 - strategy._transfer_ms(22, plan))


def test_the_strategy_learns_chains_from_the_steady_state_not_the_warm_up():
    # a warm-up round: every helper's first task per client and kind pays one-off costs,
    # and a client's span holds its set-up; what is learned is the steady state
    model, planner, strategy = _chain_strategy(450.0, (11, 12, 13))
    nodes = {h: FakeNode(ROLE_HELPER, task_ms=(900.0, 7.0, 7.0)) for h in (11, 12, 13)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=64, fill=1.0, steady_batch_ms=40.0)
                  for c in (21, 22)})
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    messages = list(strategy.configure_train(1, ArrayRecord(model.state_dict()),
                                             ConfigRecord({}), grid))
    plan = strategy.chain_plan
    busy, spans = {}, {}
    planner.observe_helper = lambda node, _plan, ms: busy.__setitem__(node, dict(ms))
    setups = {}
    planner.observe_client = (
        lambda node, _plan, compute, offset, span, setup: (
            spans.__setitem__(node, span), setups.__setitem__(node, setup)))
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    # three forwards and three backwards per client, each at the steady 7 ms
    assert busy and all(ms == pytest.approx({c: 42.0 for c in ms}) for ms in busy.values())
    assert {c for ms in busy.values() for c in ms} == {21, 22}
    assert spans == pytest.approx({c: 40.0 * plan.batches[c] for c in (21, 22)})
    # a process's first round's set-up is not what later rounds repeat: not learned
    assert setups == {21: None, 22: None}


def test_round_robin_chains_emulate_the_same_links_as_planned_ones():
    """The baseline planned chains are compared with: an unplanned split run with
    emulation sends every client its emulated link to its first helper."""
    from flsplit.server.app import _split_strategy

    model = SmallCNN()
    example = torch.zeros(2, 1, 8, 8)
    config = RunConfig.parse({"emulate": True, "chain-length": 2, "cuts": "conv2,relu2,fc2",
                              "link-mbps": "3", "link-latency-ms": 7.0})
    task = SimpleNamespace(example_input=lambda cfg: example)
    parts = split_model(model, parse_cuts("conv2,relu2,fc2"), example)
    strategy = _split_strategy(task, config, parts, model, FedAvg(min_train_nodes=1,
                                                             min_available_nodes=1), 0)
    nodes = {h: FakeNode(ROLE_HELPER) for h in (11, 12)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=64) for c in (21, 22)})
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    messages = strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({}),
                                        grid)
    links = [ClientRound.from_config(m.content[CONFIG]).link for m in messages
             if m.metadata.message_type == CLIENT_TRAIN]
    assert links == [(3.0, 7.0), (3.0, 7.0)]
