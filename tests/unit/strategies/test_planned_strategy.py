"""PlannedSplitStrategy built in a user's own ServerApp (for_model), against a fake Grid."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

import flsplit.model.costs
from flsplit.model.costs import PartCosts
from flsplit.model.zoo import SmallCNN
from flsplit.protocol import (
    BACKWARD,
    CONFIG,
    FORWARD,
    HELPER_TRAIN,
    ROLE_CLIENT,
    ROLE_HELPER,
    HelperRound,
)
from strategies import PlannedSplitStrategy
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode
from tests.unit.strategies.test_split_strategy import CLIENTS, HELPERS, RecordingFedAvg


def test_a_planned_strategy_needs_only_the_model_and_plans_every_helpers_order():
    model = SmallCNN()
    strategy = PlannedSplitStrategy.for_model(
        model,
        torch.zeros(2, 1, 8, 8),
        cuts="conv2,fc2",
        strategy=RecordingFedAvg(),
        planner="greedy",
        time_limit=0.2,
        batch_size=8,
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=16, fill=1.0) for c in CLIENTS})
    grid = FakeGrid(nodes, strategy.piece_keys)
    arrays = ArrayRecord(model.state_dict())

    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    served = set()
    for message in messages:
        if message.metadata.message_type != HELPER_TRAIN:
            continue
        round_ = HelperRound.from_config(message.content[CONFIG])
        clients = {c.client for c in round_.clients}
        served |= clients
        # the planned order has a forward and a backward task of each client it serves
        assert {(t.client, t.kind) for t in round_.order} == {
            (c, kind) for c in clients for kind in (FORWARD, BACKWARD)
        }
    assert served == {str(c) for c in CLIENTS}
    assert strategy.round_plan is not None and strategy.round_plan.prediction.makespan > 0

    aggregated, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert aggregated is not None
    assert len(strategy.strategy.aggregated) == len(CLIENTS)
    assert [entry["round"] for entry in strategy.history] == [1]


def _second_round_prediction(load_ms):
    """Predicted makespan of round 2 of one client (2 batches) and one helper, after the
    client reported ``load_ms`` per batch in round 1 (the parts' costs fixed, not measured
    on this machine, so two strategies start from the same)."""
    model = SmallCNN()
    strategy = PlannedSplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts="conv2,fc2", strategy=RecordingFedAvg(),
        planner="greedy", time_limit=0.2, batch_size=8,
    )
    client, helper = CLIENTS[0], HELPERS[0]
    nodes = {
        helper: FakeNode(ROLE_HELPER),
        client: FakeNode(ROLE_CLIENT, examples=16, fill=1.0, load_ms=load_ms),
    }
    grid = FakeGrid(nodes, strategy.piece_keys)
    arrays = ArrayRecord(model.state_dict())
    replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    strategy.aggregate_train(1, replies)
    assert strategy.planner.clients[client].load_ms == load_ms
    list(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    assert strategy.round_plan is not None and strategy.round_plan.batches == {f"c{client}": 2}
    return strategy.round_plan.prediction.makespan


def test_the_load_time_a_client_reports_lengthens_the_next_rounds_prediction(monkeypatch):
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 4_000, 1_000, 12.0)
    monkeypatch.setattr(flsplit.model.costs, "measure_part_costs", lambda *a, **k: costs)
    fast, slow = _second_round_prediction(0.0), _second_round_prediction(600.0)
    assert slow == pytest.approx(fast + 2 * 600.0)


def _learned_helper(task_ms):
    """A helper's learned body times after round 1 of two clients, its tasks per client
    taking ``task_ms`` each (forward and backward alike)."""
    model = SmallCNN()
    strategy = PlannedSplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts="conv2,fc2", strategy=RecordingFedAvg(),
        planner="greedy", time_limit=0.2, batch_size=8,
    )
    helper = HELPERS[0]
    nodes = {helper: FakeNode(ROLE_HELPER, task_ms=task_ms)}
    nodes |= {c: FakeNode(ROLE_CLIENT, examples=16, fill=1.0) for c in CLIENTS[:2]}
    grid = FakeGrid(nodes, strategy.piece_keys)
    arrays = ArrayRecord(model.state_dict())
    replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    strategy.aggregate_train(1, replies)
    profile = strategy.planner.helpers[helper]
    return profile.body_fwd_ms, profile.body_bwd_ms


def test_a_helpers_first_task_per_client_is_not_learned_as_its_compute(monkeypatch):
    # a warm-up round: each client's first forward and backward pay the helper's one-off
    # costs (imports, first calls, the body copy); the waits between tasks are not compute
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 4_000, 1_000, 12.0)
    monkeypatch.setattr(flsplit.model.costs, "measure_part_costs", lambda *a, **k: costs)
    warm_up = _learned_helper((900.0, 7.0, 7.0, 7.0))
    assert warm_up == pytest.approx(_learned_helper((7.0, 7.0, 7.0, 7.0)))
    assert warm_up == pytest.approx((7.0, 7.0))


def _planned(tmp_path):
    model = SmallCNN()
    strategy = PlannedSplitStrategy.for_model(
        model,
        torch.zeros(2, 1, 8, 8),
        cuts="conv2,fc2",
        strategy=RecordingFedAvg(),
        planner="greedy",
        time_limit=0.2,
        batch_size=8,
        output_dir=tmp_path,
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=16, fill=1.0) for c in CLIENTS})
    return strategy, FakeGrid(nodes, strategy.piece_keys), ArrayRecord(model.state_dict())


def test_round_json_lists_every_failed_client_and_helper_with_its_cause(tmp_path):
    strategy, grid, arrays = _planned(tmp_path)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    helper_of = strategy.assignment.helper_of
    dead = helper_of[CLIENTS[0]]
    grid.nodes[dead].unreachable = True  # the SuperLink replies for it
    alive = next(c for c in CLIENTS if helper_of[c] != dead)
    grid.nodes[alive].error = "the data loader broke"
    strategy.aggregate_train(1, grid.send_and_receive(messages))

    failures = json.loads((tmp_path / "round-1.json").read_text())["failures"]
    assert failures[0]["node"] == dead and failures[0]["role"] == ROLE_HELPER
    assert failures[0]["cause"].startswith("the SuperLink replied for it: Error: Node Unavailable")
    expected = {c: f"no body: helper {dead} failed" for c, h in helper_of.items() if h == dead}
    expected[alive] = "ValueError: the data loader broke (error code 2)"
    assert failures[1:] == [
        {"node": c, "role": ROLE_CLIENT, "cause": expected[c]} for c in sorted(expected)
    ]
    assert strategy.history[-1]["failures"] == failures
    assert dead not in strategy.nodes and dead not in strategy.planner.helpers  # planned out


def test_a_round_in_which_no_client_finished_is_saved_with_its_failures(tmp_path):
    strategy, grid, arrays = _planned(tmp_path)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    for client in CLIENTS:
        grid.nodes[client].lost = True
    assert strategy.aggregate_train(1, grid.send_and_receive(messages)) == (None, None)

    entry = json.loads((tmp_path / "round-1.json").read_text())
    assert entry["measured_ms"] is None and entry["measured_tasks"] == []
    assert [(f["node"], f["role"]) for f in entry["failures"]] == [
        (c, ROLE_CLIENT) for c in CLIENTS
    ]
    assert {f["cause"] for f in entry["failures"]} == {
        "no reply before the ServerApp stopped waiting (start()'s timeout)"
    }


def test_round_n_json_names_every_clients_data_plane_bytes(tmp_path):
    from flsplit.protocol import BYTES_DOWN, BYTES_UP, DATA_PLANE_BYTES

    strategy, grid, arrays = _planned(tmp_path)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    entry = json.loads((tmp_path / "round-1.json").read_text())
    assert set(entry[DATA_PLANE_BYTES]) == {str(c) for c in CLIENTS}
    for client in CLIENTS:
        fill = grid.nodes[client].fill
        assert entry[DATA_PLANE_BYTES][str(client)] == {
            BYTES_UP: int(100 * fill), BYTES_DOWN: int(200 * fill)
        }


def test_round_n_json_holds_every_clients_planned_and_measured_stages(tmp_path):
    strategy, grid, arrays = _planned(tmp_path)
    for client in CLIENTS:
        grid.nodes[client].load_ms = 3.0
        grid.nodes[client].steady_batch_ms = 40.0
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    instance, plan = strategy.round_plan.instance, strategy.round_plan.plan
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    stages = json.loads((tmp_path / "round-1.json").read_text())["client_stages_ms"]
    assert set(stages) == {str(c) for c in CLIENTS}
    for i, name in enumerate(instance.client_ids):
        j = instance.helper_ids.index(plan.assignment[name])
        row = stages[name[1:]]
        assert row["stage1"] == pytest.approx(instance.head_fwd_up[i, j])
        assert row["body_fwd"] == pytest.approx(instance.body_fwd[i, j])
        assert row["stage3"] == pytest.approx(instance.tail_fwd_bwd[i, j])
        assert row["body_bwd"] == pytest.approx(instance.body_bwd[i, j])
        assert row["stage5"] == pytest.approx(instance.down_head_bwd[i, j])
        # measured: the client's stage 1 with its load time, as the planner charges it
        assert row["measured_stage1"] == 1.0 + 3.0
        assert row["measured_stage3"] == row["measured_stage5"] == 1.0
        assert row["measured_batch"] == 40.0
