"""Global sampling with a planner: the step plan, and straggler costs from measurements."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

import flsplit.model.costs
from flsplit.config import check_modes, sync_settings
from flsplit.model.costs import PartCosts
from flsplit.model.zoo import SmallCNN
from flsplit.plan.sampling.helper_assignment import SHARE_TOLERANCE, out_of_share
from flsplit.protocol import CONFIG, HELPER_TRAIN, ROLE_CLIENT, ROLE_HELPER, HelperRound
from strategies import PlannedSplitStrategy
from strategies.sync_schedule import draw_schedule, sample_costs
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode
from tests.unit.strategies.test_split_strategy import RecordingFedAvg

FAST, SLOW = 11, 12
CLIENTS = tuple(range(21, 29))
# fixed part costs (the body dominates: 50 ms of 8 samples against 15 ms on a client)
COSTS = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 4_000, 1_000, 12.0)


@pytest.fixture(autouse=True)
def _fixed_costs(monkeypatch):
    monkeypatch.setattr(flsplit.model.costs, "measure_part_costs", lambda *a, **k: COSTS)


def _strategy(sampler="uniform", bounded=False, **config):
    """A planned strategy with a fast and a 4x slower helper; unless ``bounded``, the
    step plan follows the cost model alone (no bound on the helpers' shares)."""
    model = SmallCNN()
    strategy = PlannedSplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts="conv2,fc2", strategy=RecordingFedAvg(),
        planner="greedy", time_limit=0.2, batch_size=8,
        run_config={"sampler": sampler, "global-batch-size": 32, "batch-size": 8,
                    "sync-steps": 6, **config},
    )
    nodes = {FAST: FakeNode(ROLE_HELPER), SLOW: FakeNode(ROLE_HELPER, compute_factor=4.0)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=40, fill=1.0) for c in CLIENTS})
    if not bounded:
        strategy.share_tolerance = None
    return strategy, FakeGrid(nodes, strategy.piece_keys), ArrayRecord(model.state_dict())


def _served(messages):
    served = {}
    for message in messages:
        if message.metadata.message_type == HELPER_TRAIN:
            round_ = HelperRound.from_config(message.content[CONFIG])
            served[message.metadata.dst_node_id] = [int(c.client) for c in round_.clients]
    return served


def test_a_4x_slower_helper_batches_fewer_clients_and_every_client_is_assigned_once():
    strategy, grid, arrays = _strategy()
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    served = _served(messages)
    assert sorted(served[FAST] + served[SLOW]) == list(CLIENTS)
    assert 0 < len(served[SLOW]) < len(served[FAST])
    counts = strategy.schedules[1]
    column = {c: i for i, c in enumerate(sorted(CLIENTS))}
    assert counts[:, [column[c] for c in served[SLOW]]].sum() < counts.sum() / 3
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    entry = strategy.history[-1]
    assert entry["method"] == "sync-steps" and entry["steps"] == 6
    assert entry["predicted_step_ms"] > 0 and entry["measured_step_ms"] is not None
    assert {int(c): h for c, h in entry["helper_of"].items()} == strategy.assignment.helper_of


def test_the_next_round_is_planned_from_the_measured_body_times():
    strategy, grid, arrays = _strategy()
    # the reported factors were wrong: the "slow" helper measures 8x faster per sample
    grid.nodes[FAST].body_sample_ms = 40.0
    grid.nodes[SLOW].body_sample_ms = 5.0
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    first = _served(messages)
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert strategy.body_sample_ms == {FAST: pytest.approx(40.0), SLOW: pytest.approx(5.0)}
    second = _served(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    assert len(first[SLOW]) < len(first[FAST])
    assert len(second[SLOW]) > len(second[FAST])


def _share(counts, column):
    return counts[:, column].sum() / counts.sum()


def test_dirichlet_straggler_costs_follow_measured_speeds_from_round_2():
    strategy, grid, arrays = _strategy(
        "dirichlet", **{"sampler-straggler-weight": 1.0, "sync-steps": 200}
    )
    straggler = CLIENTS[0]
    # reported factors say all equal; what the round measures says client 21 is 4x slower
    for c in CLIENTS:
        grid.nodes[c].sample_ms = 8.0 if c == straggler else 2.0
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    first = _share(strategy.schedules[1], 0)
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert strategy.sample_ms[straggler] == pytest.approx(8.0)
    assert strategy.sample_ms[CLIENTS[1]] == pytest.approx(2.0)
    list(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    second = _share(strategy.schedules[2], 0)
    # round 1: the pooled share (1/8); round 2: data x speed, 1/4 of the others' share
    assert first == pytest.approx(1 / 8, abs=0.03)
    assert second == pytest.approx(1 / 29, abs=0.02)


class _Reported:
    """What a client reported at discovery (only what a schedule needs)."""

    def __init__(self, examples, factor):
        self.examples, self.compute_factor = examples, factor


@pytest.mark.parametrize(("speeds", "share"), [("reported", 0.5), ("measured", 0.2)])
def test_sampler_speeds_choose_reported_factors_or_measured_times(speeds, share):
    settings = sync_settings({"sampler": "dirichlet", "sampler-straggler-weight": 1.0,
                              "global-batch-size": 40, "sync-steps": 300,
                              "sampler-speeds": speeds})
    nodes = {1: _Reported(40, 1.0), 2: _Reported(40, 1.0)}
    schedule = draw_schedule(settings, nodes, 2, [1, 2], measured={1: 8.0, 2: 2.0})
    assert _share(schedule.counts, 0) == pytest.approx(share, abs=0.03)


def test_clients_without_a_measurement_are_costed_on_the_measured_scale():
    # client 3 is new: reported factor 2, the measured ones take 5 ms per unit of factor
    assert sample_costs([1, 2, 3], [1.0, 2.0, 2.0], {1: 5.0, 2: 10.0}) == [5.0, 10.0, 10.0]
    assert sample_costs([1, 2], [1.0, 3.0], {}) == [1.0, 3.0]


def test_a_planner_no_longer_refuses_global_sampling_but_cut_candidates_do():
    check_modes({"sampler": "uniform", "planner": "auto"})
    check_modes({"sampler": "dirichlet", "planner": "greedy"})
    with pytest.raises(ValueError, match="cut-candidates"):
        check_modes({"sampler": "uniform", "planner": "auto", "cut-candidates": "conv1,fc2"})
    with pytest.raises(ValueError, match="sampler-speeds"):
        sync_settings({"sampler-speeds": "guessed"})


def test_the_next_round_is_planned_from_the_helpers_measured_step_costs():
    strategy, grid, arrays = _strategy()
    # the reported factors favour FAST, but each client costs it 60 ms per step
    grid.nodes[FAST].participant_ms = 60.0
    grid.nodes[SLOW].participant_ms = 2.0
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    first = _served(messages)
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    fits = strategy.helper_step_fit
    assert fits[FAST].participant_ms > 10 * fits[SLOW].participant_ms
    entry = strategy.history[-1]
    assert entry["predicted_ms"] <= entry["round_robin_predicted_ms"] + 1e-9
    assert set(entry["measured_helper_ms"]) == {str(FAST), str(SLOW)}
    second = _served(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    assert len(first[SLOW]) < len(first[FAST])
    assert len(second[SLOW]) > len(second.get(FAST, []))


def test_a_baseline_planner_deals_round_robin_with_the_planned_runs_links_and_logs():
    model = SmallCNN()
    strategy = PlannedSplitStrategy.for_model(
        model, torch.zeros(2, 1, 8, 8), cuts="conv2,fc2", strategy=RecordingFedAvg(),
        planner="balanced-fcfs", time_limit=0.2, batch_size=8,
        run_config={"sampler": "uniform", "global-batch-size": 32, "batch-size": 8,
                    "sync-steps": 6},
    )
    nodes = {FAST: FakeNode(ROLE_HELPER), SLOW: FakeNode(ROLE_HELPER, compute_factor=4.0)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=40, fill=1.0) for c in CLIENTS})
    grid = FakeGrid(nodes, strategy.piece_keys)
    messages = list(strategy.configure_train(1, ArrayRecord(model.state_dict()),
                                             ConfigRecord({}), grid))
    served = _served(messages)
    assert served == {FAST: list(CLIENTS[0::2]), SLOW: list(CLIENTS[1::2])}  # dealt in turn
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    entry = strategy.history[-1]
    assert entry["predicted_ms"] == pytest.approx(entry["round_robin_predicted_ms"])
    dealt = np.array([i % 2 for i in range(len(CLIENTS))])
    assert entry["out_of_share"] == pytest.approx(
        out_of_share(strategy.schedules[1], dealt, 2, SHARE_TOLERANCE)
    )


def test_equal_helpers_are_dealt_round_robin_until_their_steps_are_measured():
    strategy, grid, arrays = _strategy()
    grid.nodes[SLOW].compute_factor = 1.0  # two equal helpers
    strategy.planner.helpers.clear()
    strategy.discover(grid)
    grid.nodes[FAST].participant_ms = 60.0
    grid.nodes[SLOW].participant_ms = 2.0
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    assert _served(messages) == {FAST: list(CLIENTS[0::2]), SLOW: list(CLIENTS[1::2])}
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    second = _served(strategy.configure_train(2, arrays, ConfigRecord({}), grid))
    assert len(second[SLOW]) > len(second.get(FAST, []))  # planned from the measurements


def test_the_step_plan_keeps_each_helpers_share_of_the_samples_near_its_fair_share():
    strategy, grid, arrays = _strategy(bounded=True)
    assert strategy.share_tolerance == SHARE_TOLERANCE
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))
    served = _served(messages)
    assert sorted(served[FAST] + served[SLOW]) == list(CLIENTS)
    counts = strategy.schedules[1]
    column = {c: i for i, c in enumerate(sorted(CLIENTS))}
    for helper in (FAST, SLOW):  # the 4x slower helper alone would get under a third
        share = counts[:, [column[c] for c in served[helper]]].sum() / counts.sum()
        assert 1 - SHARE_TOLERANCE <= 2 * share <= 1 + SHARE_TOLERANCE
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    entry = strategy.history[-1]
    assert entry["out_of_share"] == 0.0
    assert entry["predicted_ms"] <= entry["round_robin_predicted_ms"] + 1e-9
