"""A frozen base (adapters fine-tuned on frozen layers): sent to each node once, never
aggregated, checked by hash, kept by checkpoints; every round's parameter bytes logged.

The fake nodes here run the real node side of the base (:func:`part_state` over their own
``Context``, parts split from their own model) and return their trainable tensors set to
their fill value, as :mod:`tests.unit.strategies.fake_grid` does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg

from flsplit.client.base_cache import BaseMismatchError, held_base, part_state
from flsplit.model.frozen import base_hash, frozen_keys
from flsplit.model.splitting import parse_cuts, split_model
from flsplit.model.zoo import AdaptedMLP
from flsplit.protocol import (
    ARRAYS,
    BASE_CACHE_INFO,
    BASE_HASH,
    CLIENT_TRAIN,
    CONFIG,
    HELPER_TRAIN,
    QUERY,
    ROLE_CLIENT,
    ROLE_HELPER,
    ClientResult,
    ClientRound,
    HelperResult,
    HelperRound,
    NodeReport,
    reply_content,
    with_base_hash,
)
from flsplit.server.checkpoint import checkpoint_writer, load_checkpoint, saved_arrays
from strategies import SplitStrategy
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode

HELPERS = (11,)
CLIENTS = (21, 22)
CUTS = "hidden0,norm"
EXAMPLE = torch.zeros(2, 64)


def _model() -> AdaptedMLP:
    torch.manual_seed(0)
    return AdaptedMLP(inputs=64, width=16, rank=2, depth=2)


def _peft_model() -> torch.nn.Module:
    """The same layers with peft's LoRA on the hidden layers (the classifier trained in
    full), as ``get_peft_model`` leaves the model it wraps."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc_in", torch.nn.Linear(64, 16))
    model.add_module("act_in", torch.nn.ReLU())
    model.add_module("hidden0", torch.nn.Linear(16, 16))
    model.add_module("act0", torch.nn.ReLU())
    model.add_module("norm", torch.nn.BatchNorm1d(16))
    model.add_module("fc_out", torch.nn.Linear(16, 10))
    get_peft_model(model, LoraConfig(r=2, target_modules=["fc_in", "hidden0"],
                                     modules_to_save=["norm", "fc_out"]))
    return model  # with the adapters in place, base frozen


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps the arrays and replies it was given."""

    def __init__(self):
        super().__init__(min_train_nodes=1, min_available_nodes=1)
        self.configured: list[list[str]] = []
        self.aggregated: list[list[Message]] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.configured.append(list(arrays))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.aggregated.append(replies)
        return super().aggregate_train(server_round, replies)


@dataclass
class FrozenGrid(FakeGrid):
    """Nodes that keep the frozen base in their own context, as flsplit's do; ``claims``
    makes a node name another base in its replies."""

    contexts: dict[int, Context] = field(default_factory=dict)
    claims: dict[int, str] = field(default_factory=dict)
    model_fn: object = _model

    def context(self, node: int) -> Context:
        if node not in self.contexts:
            self.contexts[node] = Context(self.run_id, node, {}, RecordDict(), {})
        return self.contexts[node]

    def answer(self, message: Message) -> Message:
        try:
            if message.metadata.message_type == QUERY:
                return self._query(message)
            return super().answer(message)
        except ValueError as err:  # what Flower replies when a ClientApp raises
            reason = f"<class 'ValueError'>:<'{err}'>"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    def _query(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        reply = super().answer(message)
        report = NodeReport.from_content(reply.content)
        report.base_hash = held_base(self.context(node))  # as flsplit's discovery answers
        return Message(report.to_content(), reply_to=message)

    def _train(self, node: FakeNode, message: Message) -> RecordDict:
        node_id = message.metadata.dst_node_id
        round_ = ClientRound.from_config(message.content[CONFIG])
        split = split_model(self.model_fn(), parse_cuts(round_.cuts), EXAMPLE)
        parts = (split.head, split.tail)
        weights = part_state(self.context(node_id), parts, message.content[ARRAYS],
                             round_.base_hash)
        back = {k: torch.full_like(weights.state[k], node.fill)
                for part in parts for k in part.state_dict() if k not in weights.frozen}
        result = ClientResult(examples=node.examples, loss=node.fill, accuracy=0.5)
        content = reply_content(ArrayRecord(back), result.to_metrics())
        return with_base_hash(content, self.claims.get(node_id, weights.held))

    def _serve(self, helper: int, message: Message) -> RecordDict:
        round_ = HelperRound.from_config(message.content[CONFIG])
        bodies, held = {}, ""
        for served in round_.clients:
            split = split_model(self.model_fn(), parse_cuts(served.cuts), EXAMPLE)
            body = split.parts[served.piece]
            weights = part_state(self.context(helper), (body,), message.content[ARRAYS],
                                 round_.base_hash)
            fill = self.nodes[int(served.client)].fill
            bodies[served.client] = ArrayRecord(
                {k: torch.full_like(weights.state[k], fill)
                 for k in body.state_dict() if k not in weights.frozen}
            )
            held = weights.held
        content = HelperResult(finished=list(bodies)).to_content(bodies)
        return with_base_hash(content, self.claims.get(helper, held))


def _setup(model_fn=_model, **kwargs):
    model = model_fn()
    wrapped = RecordingFedAvg()
    strategy = SplitStrategy.for_model(model, EXAMPLE, cuts=CUTS, strategy=wrapped, **kwargs)
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    for i, c in enumerate(CLIENTS):
        nodes[c] = FakeNode(ROLE_CLIENT, examples=10, fill=float(i + 1))
    grid = FrozenGrid(nodes, strategy.piece_keys, model_fn=model_fn)
    return strategy, wrapped, grid, ArrayRecord(model.state_dict()), frozen_keys(model)


def _round(strategy, grid, arrays, server_round):
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), grid))
    replies = grid.send_and_receive(messages)
    new, _ = strategy.aggregate_train(server_round, replies)
    return messages, new


def _frozen_sent(messages, frozen):
    return {m.metadata.dst_node_id: sorted(set(m.content[ARRAYS]) & set(frozen))
            for m in messages}


@pytest.mark.parametrize("model_fn", [_model, _peft_model], ids=["by-hand", "peft-lora"])
def test_the_base_goes_to_each_node_once_and_never_to_the_wrapped_strategy(caplog, model_fn):
    strategy, wrapped, grid, arrays, frozen = _setup(model_fn)
    assert frozen and set(frozen) == set(strategy.base.keys)
    initial = arrays.to_torch_state_dict()
    caplog.set_level(logging.INFO)

    first, arrays = _round(strategy, grid, arrays, 1)
    sent = _frozen_sent(first, frozen)
    assert sent[11] == sorted(k for k in frozen if k.startswith("hidden"))  # the body's
    assert sent[11] and sent[21]
    for client in CLIENTS:
        assert sent[client] == sorted(k for k in frozen if not k.startswith("hidden"))
    declared = {m.content[CONFIG][BASE_HASH] for m in first}
    assert declared == {strategy.base.hash} and strategy.base.hash == base_hash(initial, frozen)

    for server_round in (2, 3):
        later, arrays = _round(strategy, grid, arrays, server_round)
        assert all(not keys for keys in _frozen_sent(later, frozen).values())
        assert {m.metadata.message_type for m in later} == {HELPER_TRAIN, CLIENT_TRAIN}

    # the wrapped strategy saw the trainable tensors and buffers only, every round
    trainable = [k for k in initial if k not in frozen]
    assert wrapped.configured == [trainable] * 3
    assert len(wrapped.aggregated) == 3
    for replies in wrapped.aggregated:
        assert len(replies) == len(CLIENTS)
        for reply in replies:
            assert list(reply.content[ARRAYS]) == trainable
    # the global model is whole: the base bit for bit as it started, the rest trained
    after = arrays.to_torch_state_dict()
    assert list(after) == list(initial)
    for key in frozen:
        assert torch.equal(after[key], initial[key]), key
    adapter = "hidden0.up.weight" if model_fn is _model else "hidden0.lora_B.default.weight"
    assert torch.allclose(after[adapter], torch.full((16, 2), 1.5))

    # parameter bytes per round: the base only in round 1
    bytes_ = strategy.param_bytes
    assert bytes_[1]["sent-base"] > 0 and bytes_[2]["sent-base"] == bytes_[3]["sent-base"] == 0
    assert bytes_[2]["sent"] == bytes_[1]["sent"] - bytes_[1]["sent-base"]
    assert bytes_[2]["received"] == bytes_[1]["received"] > 0
    resumed, *_ = _setup(model_fn)
    resumed.load_state(json.loads(json.dumps(strategy.state())))  # as a checkpoint keeps it
    assert resumed.param_bytes == bytes_
    lines = [r.getMessage() for r in caplog.records if "parameter bytes sent" in r.getMessage()]
    assert lines == [
        f"round {r}: parameter bytes sent {b['sent']} (frozen base {b['sent-base']}), "
        f"received {b['received']}"
        for r, b in sorted(bytes_.items())
    ]


def test_a_node_that_lost_its_base_fails_once_and_gets_it_again():
    strategy, _, grid, arrays, frozen = _setup()
    _, arrays = _round(strategy, grid, arrays, 1)
    grid.contexts.pop(22)  # the client restarted under the same id: its state is gone
    second, arrays = _round(strategy, grid, arrays, 2)
    assert not _frozen_sent(second, frozen)[22]
    failure = {f.node: f.cause for f in strategy.failures[2]}
    assert "does not hold 2 tensors of frozen base" in failure[22]
    third, arrays = _round(strategy, grid, arrays, 3)
    assert _frozen_sent(third, frozen)[22] == ["fc_in.base.bias", "fc_in.base.weight"]
    assert not _frozen_sent(third, frozen)[21]
    assert not strategy.failures[3]
    assert held_base(grid.contexts[22]) == strategy.base.hash


def test_a_node_holding_another_base_refuses_the_round_naming_both_hashes():
    strategy, wrapped, grid, arrays, _ = _setup()
    _, arrays = _round(strategy, grid, arrays, 1)
    # after discovery, the node came to hold another base (its own handler checks)
    grid.context(21).state[BASE_CACHE_INFO] = ConfigRecord({BASE_HASH: "0123456789abcdef"})
    _round(strategy, grid, arrays, 2)
    cause = {f.node: f.cause for f in strategy.failures[2]}[21]
    assert "this node holds frozen base 0123456789abcdef" in cause
    assert f"the server's is {strategy.base.hash}: the node is refused" in cause
    assert [r.metadata.src_node_id for r in wrapped.aggregated[1] if not r.has_error()] == [22]


def test_a_node_meeting_the_server_with_another_base_is_refused_at_discovery(caplog):
    strategy, wrapped, grid, arrays, _ = _setup()
    grid.context(22).state[BASE_CACHE_INFO] = ConfigRecord({BASE_HASH: "0123456789abcdef"})
    with caplog.at_level(logging.ERROR):
        messages, _ = _round(strategy, grid, arrays, 1)
    assert 22 not in strategy.nodes and 22 not in {m.metadata.dst_node_id for m in messages}
    cause = strategy.discovery_failures[22]
    assert cause == (f"it holds frozen base 0123456789abcdef but the server's is "
                     f"{strategy.base.hash} (give every node the server's base)")
    assert any(f"node 22 refused at discovery: {cause}" == r.getMessage()
               for r in caplog.records)
    assert [r.metadata.src_node_id for r in wrapped.aggregated[0]] == [21]
    grid.contexts.pop(22)  # restarted: it holds no base now, and is asked again
    messages, _ = _round(strategy, grid, arrays, 2)
    assert 22 in strategy.nodes and 22 not in strategy.discovery_failures


def test_a_reply_naming_another_base_is_refused_by_the_server(caplog):
    strategy, wrapped, grid, arrays, _ = _setup()
    grid.claims[22] = "fedcba9876543210"
    with caplog.at_level(logging.ERROR):
        _round(strategy, grid, arrays, 1)
    cause = {f.node: f.cause for f in strategy.failures[1]}[22]
    assert cause.startswith(f"holds frozen base fedcba9876543210 but the server's is "
                            f"{strategy.base.hash}")
    assert any("node 22 holds frozen base fedcba9876543210" in r.getMessage()
               for r in caplog.records)
    assert [r.metadata.src_node_id for r in wrapped.aggregated[0]] == [21]


def test_a_checkpoint_keeps_the_whole_model_and_a_resumed_run_the_same_base(tmp_path):
    config = {"cuts": CUTS}
    strategy, _, grid, arrays, frozen = _setup(on_round_end=checkpoint_writer(str(tmp_path),
                                                                              config))
    initial = arrays.to_torch_state_dict()
    _, arrays = _round(strategy, grid, arrays, 1)
    strategy._end_round()  # as the next round's start or the run's end does
    saved = load_checkpoint(tmp_path, config)
    assert saved is not None and list(saved.arrays) == list(initial)
    restored = saved_arrays(saved).to_torch_state_dict()
    for key in frozen:
        assert torch.equal(restored[key], initial[key]), key
    assert torch.allclose(restored["fc_out.weight"], torch.full_like(initial["fc_out.weight"],
                                                                      1.5))
    resumed, _, grid, _, _ = _setup(round_offset=1)
    messages = list(resumed.configure_train(1, saved_arrays(saved), ConfigRecord({}), grid))
    assert resumed.base.hash == strategy.base.hash
    assert {m.content[CONFIG][BASE_HASH] for m in messages} == {strategy.base.hash}


def test_part_state_caches_the_base_and_refuses_another():
    split = split_model(_model(), parse_cuts(CUTS), EXAMPLE)
    full = split_model(_model(), parse_cuts(CUTS), EXAMPLE)
    state = {k: v for part in full.parts for k, v in part.state_dict().items()}
    frozen = frozen_keys(split.head)
    context = Context(7, 21, {}, RecordDict(), {})
    first = part_state(context, (split.head,), ArrayRecord(state), "aaaa")
    assert first.frozen == set(frozen) and first.held == "aaaa"
    trainable_only = ArrayRecord({k: v for k, v in state.items() if k not in frozen})
    again = part_state(context, (split.head,), trainable_only, "aaaa")
    for key in frozen:
        assert torch.equal(again.state[key], state[key])
    with pytest.raises(BaseMismatchError, match="holds frozen base aaaa but the server's is bbbb"):
        part_state(context, (split.head,), trainable_only, "bbbb")
    fresh = Context(7, 21, {}, RecordDict(), {})
    with pytest.raises(ValueError, match="does not hold 2 tensors of frozen base aaaa"):
        part_state(fresh, (split.head,), trainable_only, "aaaa")
