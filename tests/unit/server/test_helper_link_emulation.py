"""Emulated helper-helper links on the server: every relaying helper is sent the link to
its next hop (run config ``helper-link-mbps``, ``helper-link-latency-ms``), and the chain
planner plans with the same figures."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from flsplit.config import RunConfig
from flsplit.model.segment_costs import SegmentCosts
from flsplit.model.zoo import SmallCNN
from flsplit.protocol import CONFIG, HELPER_TRAIN, ROLE_CLIENT, ROLE_HELPER, HelperRound
from flsplit.server.chain_planning import ChainRoundPlanner
from strategies.helper_links import HelperLinks
from strategies.split import SplitStrategy
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode


def test_helpers_are_sent_and_the_planner_plans_the_same_emulated_helper_links():
    run_config = RunConfig.parse({"emulate": True, "chain-length": 2,
                                  "helper-link-mbps": "40", "helper-link-latency-ms": 3.0})
    model = SmallCNN()
    strategy = SplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts="conv2,relu2,fc2",
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1), run_config=run_config,
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in (11, 12)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=64) for c in (21, 22)})
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    messages = strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({}),
                                        grid)
    hops = {}
    for message in messages:
        if message.metadata.message_type == HELPER_TRAIN:
            for served in HelperRound.from_config(message.content[CONFIG]).clients:
                hops[(message.metadata.dst_node_id, int(served.client))] = (
                    served.next_link_mbps, served.next_link_latency_ms)
    chains = strategy.assignment.chain_of
    assert {hops[(chain[0], c)] for c, chain in chains.items()} == {(40.0, 3.0)}
    assert {hops[(chain[1], c)] for c, chain in chains.items()} == {(0.0, 0.0)}  # last
    # the chain planner's helper-helper link is the same figure
    links = HelperLinks.from_config(run_config)
    links.bind(strategy)
    profile = {"model": "m", "layers": [
        {"name": n, "activation_kib": 64.0, "weights_kib": 1.0, "memory_kib": 1024.0}
        for n in ("a", "b", "c")],
        "devices": {"x": {"forward_ms": [1.0] * 3, "backward_ms": [1.0] * 3,
                          "update_ms": [0.1] * 3}}}
    planner = ChainRoundPlanner(SegmentCosts.from_profile(profile, batch_size=32),
                                lambda c, h: (10.0, 1.0), helper_link=links)
    for h in (11, 12):
        planner.add_helper(h)
    planner.add_client(21)
    problem = planner.problem([21], [11, 12]).clients[0]
    assert (problem.rate_mbps[1, 2], problem.latency_ms[1, 2]) == (40.0, 3.0)
