"""Helper chains end to end in Flower's simulation engine (Ray backend)."""

import pytest
import torch
from quickstart.task import TASK

from benchmarks.chain import rotated_pieces
from flsplit.config import chain_settings
from flsplit.simulation import simulate
from strategies import SplitStrategy
from strategies.discovery import NodeInfo
from tests.e2e.small_run import assert_loss_falls, run_small


def test_two_helper_chains_with_micro_batches_train_every_layer():
    initial, result, strategy = run_small({"num-helpers": 2, "chain-length": 2,
                                           "micro-batches": 2})
    assert len(strategy.helpers) == 2 and len(strategy.clients) == 3
    assert strategy.chain_length == 2
    pieces = strategy.piece_keys(strategy.cuts)
    assert len(pieces) == 2 and all(any(k.endswith("weight") for k in p) for p in pieces)
    chains = strategy.assignment.chain_of
    assert len(chains) == 3 and all(len(set(c)) == 2 for c in chains.values())
    assert {c[0] for c in chains.values()} == set(strategy.helpers)  # both serve as h1

    before = initial.to_torch_state_dict()
    after = result.arrays.to_torch_state_dict()
    for key in before:
        if key.endswith(("weight", "bias", "running_mean")):
            assert not torch.allclose(before[key], after[key]), f"{key} did not change"
    assert_loss_falls(result)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"chain-length": 0}, r"chain-length=0 must be an integer in \[1, 16\]"),
        ({"chain-length": "two"}, r"chain-length='two' is not an integer"),
        ({"micro-batches": 64, "batch-size": 32}, r"at most batch-size=32 micro-batches"),
        ({"chain-length": 3, "chain-cuts": "bn2"}, r"names 1 inner cuts.*needs 2"),
        (
            {"micro-batches": 2, "helper-memory": "shared"},
            r"micro-batches=2 with helper-memory='shared'",
        ),
    ],
)
def test_bad_chain_settings_are_refused_with_the_value_and_the_fix(config, match):
    with pytest.raises(ValueError, match=match):
        chain_settings(TASK.config(config))


def test_too_few_helpers_for_the_chain_fail_fast():
    config = {"num-server-rounds": 1, "num-helpers": 1, "num-clients": 2, "chain-length": 2}
    with pytest.raises(ValueError, match=r"chain-length=2 needs at least 2 helpers"):
        simulate(TASK, config)
    # the strategy's own check (deployment: helpers are whoever answered discovery)
    strategy = SplitStrategy.for_model(
        TASK.model_fn(TASK.config()), TASK.example_input(TASK.config()), cuts="conv2,relu2,fc2"
    )
    strategy.nodes = {
        1: NodeInfo(1, "helper"), 2: NodeInfo(2, "client"), 3: NodeInfo(3, "client")
    }
    with pytest.raises(RuntimeError, match=r"chain-length=2 needs at least 2 helper nodes"):
        strategy.assign_chains(1, [2, 3], strategy.chain_length)
    strategy.nodes[4] = NodeInfo(4, "helper")
    assert strategy.assign_chains(1, [2, 3], 2) == {2: [1, 4], 3: [4, 1]}


@pytest.mark.parametrize("hops", [2, 3])
def test_chain_memory_benchmark_lays_pieces_out_as_the_strategy_assigns_chains(hops):
    strategy = SplitStrategy.for_model(
        TASK.model_fn(TASK.config()), TASK.example_input(TASK.config()), cuts="conv2,relu2,fc2"
    )
    helpers, clients = [100 + j for j in range(hops)], list(range(1, 8))
    strategy.nodes = {h: NodeInfo(h, "helper") for h in helpers}
    strategy.nodes.update({c: NodeInfo(c, "client") for c in clients})
    chains = strategy.assign_chains(1, clients, hops)
    for j, helper in enumerate(helpers):
        pieces = rotated_pieces(hops, len(clients), j)
        assert pieces == [chains[c].index(helper) + 1 for c in clients]
        counts = [pieces.count(p) for p in range(1, hops + 1)]
        assert max(counts) - min(counts) <= 1  # every helper runs each position in turn


def test_planned_chains_run_every_round_and_save_each_hop(tmp_path):
    """A planner with chain-length='auto': every round is planned by the chain planner
    (routes, cuts, micro-batches, helper orders), trains, and round-N.json keeps the plan
    with every hop and the prediction next to the measured makespan."""
    import json

    _, result, strategy = run_small({
        "num-helpers": 3, "planner": "auto", "chain-length": "auto",
        "planner-time-limit": 0.3, "output-dir": str(tmp_path),
    })
    assert strategy.chain_plan is not None
    for server_round in (1, 2):
        entry = json.loads((tmp_path / f"round-{server_round}.json").read_text())
        chains = entry["chains"]
        assert set(chains["routes"]) == {str(c) for c in strategy.clients}
        for client, hops in chains["hops"].items():
            assert [h["helper"] for h in hops] == chains["routes"][client]
            assert len(chains["cuts"][client].split(",")) == len(hops) + 1
        assert entry["predicted_ms"] > 0 and entry["measured_ms"] > 0
        assert entry["predicted_stages"] and entry["measured_tasks"]
    assert_loss_falls(result)
