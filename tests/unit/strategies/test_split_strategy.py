"""SplitStrategy's configure_train and aggregate_train against a fake Grid."""

from __future__ import annotations

import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg

from flsplit.model.zoo import SmallCNN
from flsplit.protocol import (
    ARRAYS,
    CLIENT_TRAIN,
    CONFIG,
    HELPER_TRAIN,
    METRICS,
    MODE,
    NUM_EXAMPLES,
    ROLE_CLIENT,
    ROLE_HELPER,
    ROUND_WALL_SECONDS,
    TRAIN_ACC,
    TRAIN_LOSS,
    ClientRound,
    HelperRound,
    NodeReport,
)
from flsplit.runtime.auth import TokenVerifier
from strategies import SplitStrategy, discovery
from strategies.discovery import NodeInfo, check_concurrency, check_roles
from strategies.failures import error_text
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode

HELPERS = (11, 12)
CLIENTS = (21, 22, 23)
RUN = 7


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps the replies it was asked to aggregate."""

    def __init__(self, **kwargs):
        super().__init__(min_train_nodes=1, min_available_nodes=1, **kwargs)
        self.aggregated = []

    def aggregate_train(self, server_round, replies):
        self.aggregated = list(replies)
        return super().aggregate_train(server_round, replies)


def _setup(cuts, clients=CLIENTS, examples=None, **kwargs):
    model = SmallCNN()
    strategy = SplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts=cuts, strategy=RecordingFedAvg(), **kwargs
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    for i, c in enumerate(clients):
        n = examples[i] if examples else 10 * (i + 1)
        nodes[c] = FakeNode(ROLE_CLIENT, examples=n, fill=float(i + 1))
    grid = FakeGrid(nodes, strategy.piece_keys, run_id=RUN)
    arrays = ArrayRecord(model.state_dict())
    return strategy, grid, arrays


def _by_type(messages, message_type):
    return {m.metadata.dst_node_id: m for m in messages if m.metadata.message_type == message_type}


def _round(strategy, grid, arrays, server_round=1):
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({"lr": 0.1}), grid))
    replies = grid.send_and_receive(messages)
    return messages, strategy.aggregate_train(server_round, replies)


def test_configure_train_sends_body_to_helpers_and_head_tail_to_clients():
    strategy, grid, arrays = _setup("conv2,fc2")
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"lr": 0.1}), grid))

    kinds = [m.metadata.message_type for m in messages]
    assert kinds == [HELPER_TRAIN] * 2 + [CLIENT_TRAIN] * 3  # helpers first
    helper_msgs = _by_type(messages, HELPER_TRAIN)
    served = set()
    for helper, message in helper_msgs.items():
        assert helper in HELPERS
        assert set(message.content.keys()) == {ARRAYS, CONFIG}
        assert list(message.content[ARRAYS].keys()) == sorted(strategy.body_keys)
        config = message.content[CONFIG]
        assert config["lr"] == 0.1  # the wrapped strategy's config goes through
        round_ = HelperRound.from_config(config)
        assert round_.server_round == 1
        assert all(c.cuts == "conv2,fc2" for c in round_.clients)
        assert round_.listen_address == "0.0.0.0:9000"
        assert len(round_.token_key) == 32
        assert [c.piece for c in round_.clients] == [1] * len(round_.clients)
        assert [c.next_address for c in round_.clients] == [""] * len(round_.clients)
        served |= {int(c.client) for c in round_.clients}
    assert served == set(CLIENTS)

    client_msgs = _by_type(messages, CLIENT_TRAIN)
    assert set(client_msgs) == set(CLIENTS)
    for client, message in client_msgs.items():
        assert set(message.content[ARRAYS].keys()) == set(
            strategy.head_keys + strategy.tail_keys
        )
        config = message.content[CONFIG]
        round_ = ClientRound.from_config(config)
        helper = strategy.assignment.helper_of[client]
        assert round_.helper_address == f"helper-{helper}:9000"
        assert round_.cuts == "conv2,fc2"
        assert config[MODE] == "split" and config["lr"] == 0.1
        assert round_.round_token == strategy.assignment.tokens[client]
    # round-robin: both helpers serve somebody
    assert set(strategy.assignment.helper_of.values()) == set(HELPERS)


def _verifies(key, server_round, helper, client, token):
    return TokenVerifier(key, RUN, server_round, helper, [client]).check(str(client), token) is None


def test_every_hop_of_a_chain_gets_a_token_for_that_helper_and_round_only():
    strategy, grid, arrays = _setup("conv2,fc1,fc2")
    assert strategy.chain_length == 2
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    helper_cfg = {
        h: HelperRound.from_config(m.content[CONFIG])
        for h, m in _by_type(messages, HELPER_TRAIN).items()
    }
    client_cfg = {
        c: ClientRound.from_config(m.content[CONFIG])
        for c, m in _by_type(messages, CLIENT_TRAIN).items()
    }
    keys = {h: c.token_key for h, c in helper_cfg.items()}
    assert set(keys) == set(HELPERS) and keys[11] != keys[12]
    chains = strategy.assignment.chain_of
    assert set(chains) == set(CLIENTS)
    for client, (first, second) in chains.items():
        assert first != second
        # hop 1: the client's own token, for its first helper
        token1 = client_cfg[client].round_token
        assert client_cfg[client].helper_address == f"helper-{first}:9000"
        # hop 2: the first helper relays with the client's token for the second helper
        hop = next(c for c in helper_cfg[first].clients if int(c.client) == client)
        assert hop.piece == 1
        assert hop.next_address == f"helper-{second}:9000"
        token2 = hop.next_token
        last = next(c for c in helper_cfg[second].clients if int(c.client) == client)
        assert last.piece == 2
        assert last.next_address == "" and last.next_token == ""

        for helper, token in ((first, token1), (second, token2)):
            other = second if helper == first else first
            assert _verifies(keys[helper], 1, helper, client, token)
            assert not _verifies(keys[other], 1, other, client, token)  # another helper
            assert not _verifies(keys[helper], 2, helper, client, token)  # another round
            assert not _verifies(keys[helper], 1, helper, client + 100, token)
        assert token1 != token2


def test_tokens_change_with_the_round():
    strategy, grid, arrays = _setup("conv2,fc2")
    _round(strategy, grid, arrays, 1)
    first = dict(strategy.assignment.tokens)
    _round(strategy, grid, arrays, 2)
    assert all(first[c] != strategy.assignment.tokens[c] for c in CLIENTS)


@pytest.mark.parametrize("cuts", ["conv2,fc2", "conv2,fc1,fc2"])
def test_aggregate_train_assembles_one_full_model_per_client(cuts):
    strategy, grid, arrays = _setup(cuts)
    _, (aggregated, metrics) = _round(strategy, grid, arrays)
    assert aggregated is not None and metrics is not None
    assert ROUND_WALL_SECONDS in metrics
    replies = strategy.strategy.aggregated
    assert len(replies) == len(CLIENTS)
    for reply in replies:
        client = reply.metadata.src_node_id
        fill = grid.nodes[client].fill
        full = reply.content[ARRAYS]
        assert list(full.keys()) == strategy.full_keys  # head, body pieces, tail in order
        for key, tensor in full.to_torch_state_dict().items():
            assert torch.all(tensor == fill), f"client {client}: {key} is not its own"
        # The wrapped strategy (and the app's results) get the client's own metrics, not
        # the stage times and spans the planner read.
        assert set(reply.content[METRICS]) == {NUM_EXAMPLES, TRAIN_LOSS, TRAIN_ACC}
    assert set(metrics) == {TRAIN_LOSS, TRAIN_ACC, ROUND_WALL_SECONDS}
    assert set(strategy.helper_peak_mib) == set(HELPERS)


def test_a_missing_chain_piece_leaves_that_client_out_and_aggregates_the_others():
    strategy, grid, arrays = _setup("conv2,fc1,fc2")
    strategy.configure_train(1, arrays, ConfigRecord({}), grid)  # to learn the chains
    chains = strategy.assignment.chain_of
    dropped = CLIENTS[1]
    grid.silent = {(chains[dropped][1], dropped)}  # its second helper returns no piece
    _, (aggregated, _) = _round(strategy, grid, arrays, 1)
    assert aggregated is not None
    assert sorted(r.metadata.src_node_id for r in strategy.strategy.aggregated) == [
        c for c in CLIENTS if c != dropped
    ]
    # the helper that returned no piece is named, not the one that did
    assert [f.to_dict() for f in strategy.failures[1]] == [
        {
            "node": dropped,
            "role": ROLE_CLIENT,
            "cause": f"no body returned by helper {chains[dropped][1]}",
        }
    ]


def test_a_client_that_aborted_on_its_helper_is_named_with_its_cause(caplog):
    strategy, grid, arrays = _setup("conv2,fc2")
    strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    crashed = CLIENTS[2]
    helper = strategy.assignment.helper_of[crashed]
    grid.aborted = {(helper, crashed): "OSError: disk gone"}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, (aggregated, _) = _round(strategy, grid, arrays, 1)
    assert aggregated is not None
    assert crashed not in [r.metadata.src_node_id for r in strategy.strategy.aggregated]
    named = [r.getMessage() for r in caplog.records if "aborted" in r.getMessage()]
    assert named == [
        # its own reply came back fine here, so the round's failures name the helper's word
        f"round 1: client {crashed} failed: aborted on helper {helper}: OSError: disk gone",
        f"round 1: client {crashed} aborted its round on helper {helper}: OSError: disk gone",
    ]
    assert [f.to_dict() for f in strategy.failures[1]] == [
        {"node": crashed, "role": "client",
         "cause": f"aborted on helper {helper}: OSError: disk gone"}
    ]


def test_each_round_records_its_clients_helpers_and_who_failed():
    strategy, grid, arrays = _setup("conv2,fc2")
    strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    dropped = CLIENTS[2]
    grid.silent = {(strategy.assignment.helper_of[dropped], dropped)}  # its body never came
    _round(strategy, grid, arrays, 1)
    record = strategy.round_records[1]
    assert record["clients"] == list(CLIENTS)
    assert record["completed"] == [c for c in CLIENTS if c != dropped]
    assert record["failed"] == [dropped]
    assert record["aggregated"] is True
    assert record["helper-of"] == {str(c): h for c, h in strategy.assignment.helper_of.items()}
    assert set(record["helper-of"].values()) == set(HELPERS)


def test_a_round_without_enough_complete_clients_keeps_the_model():
    strategy, grid, arrays = _setup("conv2,fc2", min_completed_clients=3)
    strategy.configure_train(1, arrays, ConfigRecord({}), grid)
    grid.silent = {(strategy.assignment.helper_of[CLIENTS[0]], CLIENTS[0])}
    _, result = _round(strategy, grid, arrays)
    assert result == (None, None)
    assert 1 in strategy.round_times
    assert strategy.round_records[1]["aggregated"] is False
    assert strategy.round_records[1]["failed"] == [CLIENTS[0]]


def test_aggregation_is_weighted_by_examples():
    clients = (21, 22)
    strategy, grid, arrays = _setup("conv2,fc2", clients=clients, examples=[1, 3])
    _, (aggregated, metrics) = _round(strategy, grid, arrays)
    fills = [grid.nodes[c].fill for c in clients]  # 1.0 and 2.0
    expected = (1 * fills[0] + 3 * fills[1]) / 4
    state = aggregated.to_torch_state_dict()
    assert list(state) == strategy.full_keys
    for key, tensor in state.items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, torch.full_like(tensor, expected)), key
    assert metrics[TRAIN_LOSS] == pytest.approx(expected)  # the clients' loss = their fill


def test_plain_federated_mode_sends_the_full_model_to_clients_only():
    strategy, grid, arrays = _setup("conv2,fc2", split=False)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    assert {m.metadata.dst_node_id for m in messages} == set(CLIENTS)
    assert all(m.content[CONFIG][MODE] == "fedavg" for m in messages)
    assert set(messages[0].content[ARRAYS].keys()) == set(strategy.full_keys)


def test_the_wrapped_strategy_stays_reachable_through_the_split_strategy():
    class AppStrategy(RecordingFedAvg):
        def set_results_path(self, path):
            self.results_path = path

    inner = AppStrategy(fraction_evaluate=0.25)
    strategy = SplitStrategy.for_model(SmallCNN(), torch.zeros(2, 1, 8, 8), "conv2,fc2", inner)
    strategy.set_results_path("out/results.json")  # the app's own method, on the wrapper
    assert inner.results_path == "out/results.json"
    assert strategy.fraction_evaluate == 0.25 and strategy.min_train_nodes == 1
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        _ = strategy.not_there


def test_a_simulation_without_a_client_names_num_helpers():
    reports = {
        n: NodeInfo(n, ROLE_HELPER, report=NodeReport(ROLE_HELPER, simulation_concurrency=6))
        for n in (1, 2)
    }
    with pytest.raises(RuntimeError, match="num-helpers=2 leaves no node to be a client"):
        check_roles(reports, 2)
    check_roles({**reports, 3: NodeInfo(3, ROLE_CLIENT)}, 2)  # a client: fine
    deployed = {n: NodeInfo(n, ROLE_HELPER, report=NodeReport(ROLE_HELPER)) for n in (1, 2)}
    check_roles(deployed, 2)  # deployment: clients may still be starting


def test_a_node_failing_discovery_shows_its_error_in_the_log_and_the_exception(caplog):
    model = SmallCNN()
    inner = FedAvg(min_available_nodes=3, min_train_nodes=3)
    strategy = SplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), "conv2,fc2", inner, query_timeout=0
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=10) for c in CLIENTS})
    nodes[23].error = "partition-id 9 is out of range for num-partitions=3"
    grid = FakeGrid(nodes, strategy.piece_keys)

    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.discover(grid)
        strategy.discover(grid)  # asked again: same error, logged once
        with pytest.raises(
            RuntimeError, match=r"node 23: .*partition-id 9 is out of range.*fix what it says"
        ):
            strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord(), grid)
    failed = [r.getMessage() for r in caplog.records if "failed discovery" in r.getMessage()]
    assert len(failed) == 1 and "partition-id 9 is out of range" in failed[0]
    assert "did not answer" not in caplog.text  # it answered, with an error
    assert set(strategy.clients) == {21, 22}

    nodes[23].error = ""  # fixed: answers properly the next time it is asked
    strategy.discover(grid)
    assert set(strategy.clients) == set(CLIENTS) and not strategy.discovery_failures


def _simulated(helpers: int, clients: int, concurrency: int) -> dict[int, NodeInfo]:
    roles = [ROLE_HELPER] * helpers + [ROLE_CLIENT] * clients
    return {
        n: NodeInfo(n, role, report=NodeReport(role, simulation_concurrency=concurrency))
        for n, role in enumerate(roles, start=1)
    }


def test_helpers_and_a_client_must_fit_the_backend_and_the_engine(monkeypatch):
    monkeypatch.setattr(discovery, "engine_limit", lambda: None)  # lifted by the ClientApp
    check_concurrency(_simulated(helpers=8, clients=4, concurrency=12))
    with pytest.raises(RuntimeError, match=r"backend runs 2 ClientApp calls at once, but 2 help"):
        check_concurrency(_simulated(helpers=2, clients=4, concurrency=2))
    monkeypatch.setattr(discovery, "engine_limit", lambda: 6)  # not lifted: min(32, 2 + 4)
    check_concurrency(_simulated(helpers=5, clients=4, concurrency=12))
    with pytest.raises(RuntimeError, match="engine runs 6 ClientApp calls at once"):
        check_concurrency(_simulated(helpers=8, clients=4, concurrency=12))
    deployed = {n: NodeInfo(n, ROLE_HELPER, report=NodeReport(ROLE_HELPER)) for n in range(9)}
    check_concurrency(deployed)  # deployment: nothing to check


# -- who failed, and why -----------------------------------------------------------------


def _failure_lines(caplog):
    return [r.getMessage() for r in caplog.records if " failed: " in r.getMessage()]


def test_an_unreachable_helper_is_named_by_its_own_id_not_the_superlinks(caplog):
    strategy, grid, arrays = _setup("conv2,fc2")
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    dead = HELPERS[0]
    grid.nodes[dead].unreachable = True  # died after discovery
    replies = grid.send_and_receive(messages)
    from_superlink = [r for r in replies if r.has_error()]
    assert [r.metadata.src_node_id for r in from_superlink] == [SUPERLINK_NODE_ID]

    with caplog.at_level(logging.WARNING, logger="flwr"):
        aggregated, _ = strategy.aggregate_train(1, replies)

    orphans = sorted(c for c, h in strategy.assignment.helper_of.items() if h == dead)
    assert orphans
    lines = _failure_lines(caplog)
    assert lines[0].startswith(
        f"round 1: helper {dead} failed: the SuperLink replied for it: Error: Node Unavailable"
    )
    assert lines[1:] == [
        f"round 1: client {c} failed: no body: helper {dead} failed" for c in orphans
    ]
    assert f"helper {SUPERLINK_NODE_ID} failed" not in caplog.text
    failures = strategy.failures[1]
    assert [(f.node, f.role) for f in failures] == [(dead, ROLE_HELPER)] + [
        (c, ROLE_CLIENT) for c in orphans
    ]
    # the other helper's clients are aggregated
    assert aggregated is not None
    assert sorted(r.metadata.src_node_id for r in strategy.strategy.aggregated) == sorted(
        set(CLIENTS) - set(orphans)
    )


def test_an_unreachable_client_is_a_clients_failure_and_the_wrapped_strategy_counts_it(caplog):
    strategy, grid, arrays = _setup("conv2,fc2")
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    dead = CLIENTS[1]
    grid.nodes[dead].unreachable = True
    with caplog.at_level(logging.WARNING, logger="flwr"):
        aggregated, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert [(f.node, f.role) for f in strategy.failures[1]] == [(dead, ROLE_CLIENT)]
    assert "Node Unavailable" in strategy.failures[1][0].cause
    assert _failure_lines(caplog)[0].startswith(f"round 1: client {dead} failed: the SuperLink")
    assert aggregated is not None
    # its error reply goes to the wrapped strategy with the others, not to the helpers'
    errors = [r for r in strategy.strategy.aggregated if r.has_error()]
    assert len(errors) == 1 and len(strategy.strategy.aggregated) == len(CLIENTS)


def test_a_round_below_min_completed_clients_logs_why_each_failed_first(caplog):
    clients = (21, 22, 23, 24)
    strategy, grid, arrays = _setup("conv2,fc2", clients=clients, min_completed_clients=3)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    helper_of = strategy.assignment.helper_of
    grid.nodes[21].error = "the data loader broke"  # its ClientApp raises
    grid.idle = {(helper_of[22], 22)}  # its helper dropped it as idle
    grid.silent = {(helper_of[23], 23)}  # its helper returned no body for it
    grid.nodes[24].lost = True  # no reply at all
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = strategy.aggregate_train(1, grid.send_and_receive(messages))

    assert result == (None, None)
    messages = [r.getMessage() for r in caplog.records]
    skipped = next(i for i, m in enumerate(messages) if "only 0 complete client updates" in m)
    assert messages[:skipped] == [
        "round 1: client 21 failed: ValueError: the data loader broke (error code 2)",
        f"round 1: client 22 failed: dropped by helper {helper_of[22]}: no request for 120 s",
        f"round 1: client 23 failed: no body returned by helper {helper_of[23]}",
        "round 1: client 24 failed: no reply before the ServerApp stopped waiting "
        "(start()'s timeout)",
    ]
    assert "only 0 complete client updates of 4" in messages[skipped]


def test_a_node_unreachable_at_discovery_is_named_by_its_own_id():
    strategy, grid, _ = _setup("conv2,fc2")
    grid.nodes[23].unreachable = True
    strategy.discover(grid)
    assert set(strategy.discovery_failures) == {23}
    assert "Node Unavailable" in strategy.discovery_failures[23]


def test_an_evaluation_failure_is_logged_with_the_clients_id(caplog):
    strategy, grid, arrays = _setup("conv2,fc2")
    messages = list(strategy.configure_evaluate(1, arrays, ConfigRecord({}), grid))
    grid.nodes[22].unreachable = True
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.aggregate_evaluate(1, grid.send_and_receive(messages))
    assert _failure_lines(caplog)[0].startswith(
        "round 1 evaluate: client 22 failed: the SuperLink replied for it"
    )


def test_an_error_reply_is_shortened_to_the_clientapps_exception():
    def reply(reason):
        sent = Message(RecordDict(), dst_node_id=21, message_type=CLIENT_TRAIN)
        return Message(Error(code=2, reason=reason), reply_to=sent)

    deployed = reply("<class 'flsplit.runtime.helper_client.DataPlaneError'>:<'helper down'>")
    assert error_text(deployed) == "DataPlaneError: helper down (error code 2)"
    simulated = reply(
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor."
        "run() Traceback ... RuntimeError: power lost\n\nThe above exception ... "
        "Exception ClientAppException occurred. Message: power lost'>"
    )
    assert error_text(simulated) == "power lost (error code 2)"
    assert error_text(reply("Error: Node Unavailable")) == "Error: Node Unavailable (error code 2)"
