"""Round-robin helper chains (no planner) use only the helper links that exist: the run
config's ``helper-links`` and the helpers' node configs; no route fails before the round."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from flsplit.config import RunConfig
from flsplit.launch import federation_config
from flsplit.model.zoo import SmallCNN
from flsplit.protocol import HELPER_TRAIN, ROLE_CLIENT, ROLE_HELPER, NodeReport
from strategies.assignment import linked_route
from strategies.discovery import NodeInfo
from strategies.split import SplitStrategy
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode

HELPERS = (11, 12, 13)  # a fake node's index is its id: helper-links name 11, 12, 13
CLIENTS = (21, 22, 23, 24, 25, 26)


#: the strategy's chain length is its cuts' (the server splits at chain-cuts)
CUTS = {2: "conv2,relu2,fc2", 3: "conv2,bn2,fc1,fc2"}


def _strategy(run_config, declared=None):
    model = SmallCNN()
    strategy = SplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts=CUTS[run_config["chain-length"]],
        strategy=FedAvg(min_train_nodes=1, min_available_nodes=1),
        run_config=run_config,
    )
    declared = declared or {}
    nodes = {h: FakeNode(ROLE_HELPER, helper_links=declared.get(h)) for h in HELPERS}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=64, fill=1.0) for c in CLIENTS})
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=3)
    return strategy, grid, ArrayRecord(model.state_dict())


def _chains(run_config, declared=None, server_round=1):
    strategy, grid, arrays = _strategy(run_config, declared)
    strategy.configure_train(server_round, arrays, ConfigRecord({}), grid)
    return strategy.assignment.chain_of


def _linked(pairs):
    return {frozenset(p) for p in pairs}


@pytest.mark.parametrize("server_round", [1, 2, 3])
def test_round_robin_chains_use_only_the_run_configs_helper_links(server_round):
    """A line 11 - 12 - 13: the rotation would give some client 13 -> 11, which does not
    exist; every chain's hops are links and every helper still heads some chain."""
    chains = _chains({"chain-length": 2, "helper-links": "11-12,12-13"},
                     server_round=server_round)
    assert set(chains) == set(CLIENTS)
    links = _linked([(11, 12), (12, 13)])
    for chain in chains.values():
        assert len(chain) == 2 and frozenset(chain) in links
    assert {chain[0] for chain in chains.values()} == set(HELPERS)
    # deterministic: the same round gives the same chains
    assert _chains({"chain-length": 2, "helper-links": "11-12,12-13"},
                   server_round=server_round) == chains


def test_round_robin_chains_use_only_links_the_helpers_node_configs_declare():
    """No run-config links; helper 11 declares a link with 12 only (so 11 - 13 is gone)."""
    chains = _chains({"chain-length": 2}, declared={11: [12]})
    for chain in chains.values():
        assert frozenset(chain) != frozenset((11, 13))
    assert {chain[0] for chain in chains.values()} == set(HELPERS)


def test_with_every_link_round_robin_chains_rotate_as_before():
    chains = _chains({"chain-length": 3})
    assert [chains[c] for c in CLIENTS] == [
        [11, 12, 13], [12, 13, 11], [13, 11, 12]] * 2


def test_no_route_of_the_chain_length_fails_before_the_round_with_the_fix():
    strategy, grid, arrays = _strategy({"chain-length": 3, "helper-links": "11-12"})
    with pytest.raises(RuntimeError, match=(
            r"chain-length=3: no route of 3 helpers .*helper links by index: 11-12;.*"
            r"lower chain-length, or add links")):
        strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    assert not [m for m in grid.sent if m.metadata.message_type == HELPER_TRAIN]
    # the declared links count too: 13 declares no link at all, which leaves 11 - 12
    strategy, grid, arrays = _strategy({"chain-length": 3}, declared={13: []})
    with pytest.raises(RuntimeError, match=r"helper links by index: 11-12;"):
        strategy.configure_train(1, arrays, ConfigRecord({}), grid)


def test_simulate_refuses_run_config_links_without_a_route_before_anything_starts():
    settings = RunConfig.parse({"num-helpers": 3, "num-clients": 2, "chain-length": 3,
                                "helper-links": "0-1,2-0"})
    assert federation_config(settings)["num-supernodes"] == 5  # 1 - 0 - 2
    with pytest.raises(ValueError, match=(
            r"chain-length=3 with helper-links='0-1'.*links among them: 0-1\): lower "
            r"chain-length or add links")):
        federation_config(settings.replace(**{"helper-links": "0-1"}))
    # planned chains are the planner's: it plans around missing links
    federation_config(settings.replace(**{"helper-links": "0-1", "planner": "auto"}))


def test_linked_route_finds_a_route_exactly_when_one_exists():
    rng = random.Random(4)
    for _ in range(300):
        count = rng.randint(1, 6)
        length = rng.randint(1, count)
        edges = {frozenset(p) for p in itertools.combinations(range(count), 2)
                 if rng.random() < 0.4}
        linked = lambda a, b, edges=edges: frozenset((a, b)) in edges  # noqa: E731
        exists = any(all(linked(a, b) for a, b in itertools.pairwise(p))
                     for p in itertools.permutations(range(count), length))
        start = rng.randrange(count)
        route = linked_route(count, start, length, linked)
        assert (route is not None) == exists
        if route is not None:
            assert len(set(route)) == length
            assert all(linked(a, b) for a, b in itertools.pairwise(route))
    # every link: the rotation from the start
    assert linked_route(5, 3, 3, lambda a, b: True) == [3, 4, 0]


def test_round_robin_chains_take_the_helpers_in_index_order():
    """Node ids 101, 102, 103 are helpers 2, 0, 1: turn and links go by index."""
    strategy, _, _ = _strategy({"chain-length": 2, "helper-links": "0-1,1-2"})
    index = {101: 2, 102: 0, 103: 1}
    strategy.nodes = {n: NodeInfo(n, ROLE_HELPER, report=NodeReport(role=ROLE_HELPER, index=i))
                      for n, i in index.items()}
    strategy.nodes.update({c: NodeInfo(c, ROLE_CLIENT) for c in (1, 2, 3)})
    chains = strategy.assign_chains(1, [1, 2, 3], 2)
    assert [[index[h] for h in chains[c]] for c in (1, 2, 3)] == [[0, 1], [1, 2], [2, 1]]


def test_helpers_that_report_no_distinct_index_still_chain_over_every_link():
    """A deployment whose helpers set no helper-index reports index 0 for all: without
    helper-links every helper still reaches every other, as before."""
    strategy, _, _ = _strategy({"chain-length": 3})
    strategy.nodes = {h: NodeInfo(h, ROLE_HELPER, report=NodeReport(role=ROLE_HELPER))
                      for h in (101, 102, 103)}
    strategy.nodes.update({c: NodeInfo(c, ROLE_CLIENT) for c in (1, 2, 3)})
    assert strategy.assign_chains(1, [1, 2, 3], 3) == {
        1: [101, 102, 103], 2: [102, 103, 101], 3: [103, 101, 102]}
