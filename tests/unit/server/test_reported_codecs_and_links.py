"""What nodes report of their links reaches the round planners: each client's own codecs
(one hop and chains), a helper's codecs for its next hops, and the helpers a helper has
a link with (planned chains route over those only)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from flsplit.client import discovery
from flsplit.config import RunConfig, parse_codec
from flsplit.model.splitting import parse_cuts, split_model
from flsplit.model.zoo import SmallCNN
from flsplit.plan.multihop.evaluation import placement_stages
from flsplit.protocol import (
    INFO,
    QUERY,
    REACHED_HELPERS,
    ROLE_CLIENT,
    ROLE_HELPER,
    NodeReport,
    ProtocolError,
)
from flsplit.server.node_profiles import transfer_ms
from flsplit.server.planning import HelperLinks
from flsplit.server.sync_planning import step_costs
from strategies.chain_planned import ChainPlannedSplitStrategy
from strategies.discovery import NodeInfo
from tests.unit.server.test_chain_planning import _planner
from tests.unit.server.test_coded_planning import COSTS, LATENCY, RATE
from tests.unit.server.test_coded_planning import _planner as _one_hop_planner
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode

INT8, FP16, NONE = parse_codec("int8"), parse_codec("fp16"), parse_codec("none")


def _link_slopes(problem, helpers, cuts):
    """Per-sample time of each link stage of a client's route (ms per sample)."""
    stages, _ = placement_stages(problem, helpers, cuts)
    return {s.name: s.c for s in stages if s.name.startswith("link")}


# -- chains: coded bytes on every hop ---------------------------------------------------


def test_a_chain_instance_with_int8_has_a_quarter_of_the_transfer_times_of_none():
    raw = _planner(4096.0).problem([21], [1, 2, 3]).clients[0]
    coded = _planner(4096.0, activations=INT8, gradients=INT8).problem(
        [21], [1, 2, 3]).clients[0]
    for helpers, cuts in (([1], [1, 4]), ([1, 3], [1, 2, 4]), ([1, 2, 3], [1, 2, 3, 4])):
        before, after = _link_slopes(raw, helpers, cuts), _link_slopes(coded, helpers, cuts)
        assert before and before.keys() == after.keys()
        for name, slope in before.items():
            assert after[name] == pytest.approx(slope / 4)


def test_chains_charge_a_clients_reported_codec_and_a_helpers_own_next_hop():
    planner = _planner(4096.0)  # the run config's codecs: none
    planner.set_codecs(21, INT8, INT8)  # client 21's node config: int8
    planner.set_codecs(2, NONE, None)  # helper 2 relays activations raw
    planner.set_codecs(1, None, None)  # helper 1 sets none of its own
    a, b = planner.problem([21, 22], [1, 2, 3]).clients
    assert a.byte_ratio[0, 1:].tolist() == pytest.approx([0.25] * 3)
    assert b.byte_ratio[0, 1:].tolist() == pytest.approx([1.0] * 3)
    assert a.byte_ratio[1, 2] == a.byte_ratio[1, 3] == pytest.approx(0.25)  # the client's
    assert a.byte_ratio[2, 3] == pytest.approx((1.0 + 0.25) / 2)  # h2's activations raw
    assert b.byte_ratio[2, 3] == pytest.approx(1.0)
    # the codecs survive a checkpoint
    restored = _planner(4096.0)
    restored.load_state_dict(planner.state_dict())
    assert restored.codecs_of(21) == (INT8, INT8) and restored.codecs_of(22) == (NONE, NONE)


def test_the_strategy_learns_compute_less_the_coded_transfers_a_client_reported():
    """End to end: clients report their codecs at discovery; the planner charges them
    and the strategy takes their coded transfers out of the measured stages."""
    model = SmallCNN()
    example = torch.zeros(2, 1, 8, 8)
    parts = split_model(model, parse_cuts("conv2,fc2"), example)
    planner = _planner(helper_memory=4096.0, helpers=(11, 12), clients=(21, 22))
    strategy = ChainPlannedSplitStrategy.from_split(
        parts, model, example, strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        planner=planner, batch_size=32,
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in (11, 12)}
    nodes[21] = FakeNode(ROLE_CLIENT, examples=64, fill=1.0, codecs=("int8", "int8"))
    nodes[22] = FakeNode(ROLE_CLIENT, examples=64, fill=1.0, codecs=("none", "none"))
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    list(strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({}), grid))
    plan = strategy.chain_plan
    assert planner.codecs_of(21) == (INT8, INT8) and planner.codecs_of(22) == (NONE, NONE)
    k = plan.problem.client_ids.index("c21")
    assert plan.problem.clients[k].byte_ratio[0, 1:].tolist() == pytest.approx([0.25, 0.25])
    plan.positions[22] = plan.positions[21]
    plan.routes[22] = plan.routes[21]
    latency = 4 * 1.0  # _planner's links: 100 Mbit/s, 1 ms
    coded = strategy._transfer_ms(21, plan) - latency
    raw = strategy._transfer_ms(22, plan) - latency
    assert coded == pytest.approx(raw / 4)


# -- one hop: a client's own codec ----------------------------------------------------


def test_the_one_hop_planner_charges_a_client_its_reported_codec():
    planner = _one_hop_planner()  # run config: none
    planner.add_client(2)
    planner.set_codecs(2, INT8, FP16)
    instance = planner.instance([1, 2], [9])
    own = instance.head_fwd_up[1, 0] - COSTS.head_fwd_ms
    assert own == pytest.approx(transfer_ms(COSTS.cut1_bytes / 4, RATE, LATENCY))
    assert instance.down_head_bwd[1, 0] - COSTS.head_bwd_ms == pytest.approx(
        transfer_ms(COSTS.cut1_bytes / 2, RATE, LATENCY))
    assert instance.head_fwd_up[0, 0] - COSTS.head_fwd_ms == pytest.approx(
        transfer_ms(COSTS.cut1_bytes, RATE, LATENCY))
    # synchronous steps too
    costs = step_costs(planner, [1, 2], [9], torch.tensor([[4, 4]]).numpy(), 32)
    assert costs.transfer_ms[1, 0] < costs.transfer_ms[0, 0]
    # a helper's report does not change one-hop plans; a spelling is checked on use
    planner.set_codecs(9, INT8, INT8)
    assert planner.instance([1], [9]).head_fwd_up[0, 0] == pytest.approx(
        instance.head_fwd_up[0, 0])


# -- helper links from node configs ---------------------------------------------------


def _helpers(*declared):
    nodes = {}
    for index, links in enumerate(declared):
        report = NodeReport(role=ROLE_HELPER, index=index,
                            helper_links=None if links is None else list(links))
        nodes[100 + index] = NodeInfo(100 + index, ROLE_HELPER, report=report)
    return SimpleNamespace(nodes=nodes)


@pytest.mark.parametrize(("pairs", "declared", "linked"), [
    # no run config, no declarations: every link
    (None, (None, None, None), {(0, 1), (0, 2), (1, 2)}),
    # helper 0 has links with helper 2 only; helper 1 declares nothing
    (None, ([2], None, None), {(0, 2), (1, 2)}),
    # a link needs both declarers: 0 names 1 but 1 names only 2
    (None, ([1, 2], [2], None), {(0, 2), (1, 2)}),
    # the run config and the declarations intersect
    (frozenset({(0, 1), (1, 0), (0, 2), (2, 0)}), ([1], None, None), {(0, 1)}),
])
def test_helper_links_exist_where_the_run_config_and_every_declaring_helper_allow(
        pairs, declared, linked):
    links = HelperLinks(pairs)
    links.strategy = _helpers(*declared)
    found = {(a - 100, b - 100) for a, b in itertools.combinations((100, 101, 102), 2)
             if links(a, b) is not None}
    assert found == linked


def test_planned_routes_never_use_a_link_a_helper_leaves_out():
    """Bodies need two helpers; helpers 11 and 12 each declare a link with 13 only, so
    no route goes 11 -> 12 (which the plan takes when they declare nothing)."""
    model = SmallCNN()
    example = torch.zeros(2, 1, 8, 8)
    parts = split_model(model, parse_cuts("conv2,fc2"), example)

    def routes(declared):
        links = HelperLinks(None)
        planner = _planner(helper_memory=450.0, helpers=(11, 12, 13), clients=(21, 22),
                           helper_link=links)
        strategy = ChainPlannedSplitStrategy.from_split(
            parts, model, example,
            strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
            planner=planner, batch_size=32,
        )
        links.strategy = strategy
        nodes = {h: FakeNode(ROLE_HELPER, helper_links=declared.get(h)) for h in (11, 12, 13)}
        nodes.update({c: FakeNode(ROLE_CLIENT, examples=64, fill=1.0) for c in (21, 22)})
        grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
        list(strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({}),
                                      grid))
        return strategy.chain_plan.routes

    free = routes({})
    assert any((11, 12) in itertools.pairwise(r) for r in free.values())
    declared = routes({11: [13], 12: [13]})
    assert all(len(r) >= 2 for r in declared.values())
    for route in declared.values():
        assert (11, 12) not in itertools.pairwise(route)


# -- what nodes report ----------------------------------------------------------------


def test_the_node_report_carries_codecs_and_declared_links():
    report = NodeReport(role=ROLE_HELPER, index=2, activations_codec="int8",
                        helper_links=[3, 0])
    back = NodeReport.from_content(report.to_content())
    assert back.activations_codec == "int8" and back.gradients_codec is None
    assert back.helper_links == [0, 3]
    none = NodeReport.from_content(NodeReport(role=ROLE_HELPER, helper_links=[]).to_content())
    assert none.helper_links == []
    assert NodeReport.from_content(NodeReport(role=ROLE_HELPER).to_content()).helper_links \
        is None
    content = report.to_content()
    content.config_records[INFO][REACHED_HELPERS] = "1,x"
    with pytest.raises(ProtocolError, match=REACHED_HELPERS):
        NodeReport.from_content(content)


def _query(node_config, run_config, monkeypatch):
    monkeypatch.setattr(discovery, "count_train_examples", lambda *args: 10)
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                      run_config=run_config)
    msg = Message(RecordDict(), dst_node_id=7, message_type=QUERY)
    reply = discovery.answer_query(msg, context, None, RunConfig.of(run_config))
    return NodeReport.from_content(reply.content)


def test_nodes_report_their_codecs_and_declared_links(monkeypatch):
    run = {"compress-activations": "fp16"}
    client = _query({"role": "client", "compress-gradients": "int8"}, run, monkeypatch)
    assert (client.activations_codec, client.gradients_codec) == ("fp16", "int8")
    helper = _query({"role": "helper", "helper-index": 1, "helper-links": "0, 2",
                     "compress-activations": "int8"}, run, monkeypatch)
    assert helper.helper_links == [0, 2]
    assert (helper.activations_codec, helper.gradients_codec) == ("int8", None)
    plain = _query({"role": "helper", "helper-index": 1}, run, monkeypatch)
    assert plain.helper_links is None and plain.activations_codec is None
    with pytest.raises(ValueError, match="helper-links item 'x'"):
        _query({"role": "helper", "helper-links": "1,x"}, run, monkeypatch)
