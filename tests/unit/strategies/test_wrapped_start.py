"""A wrapped strategy stays itself: its own start() runs, with split learning inside.

``AppFedAvg`` is written the way Flower's advanced-pytorch ``CustomFedAvg`` is: its own
round loop in ``start`` keeps the best model through its private helper, writes a results
file at the end, and reads attributes its own ``set_save_path_and_run_dir`` sets.
"""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord
from flwr.serverapp.strategy import FedAvg, Result

from flsplit.model.zoo import SmallCNN
from flsplit.protocol import (
    ARRAYS,
    CLIENT_TRAIN,
    CONFIG,
    EVAL_LOSS,
    HELPER_TRAIN,
    ROLE_CLIENT,
    ROLE_HELPER,
    TRAIN_LOSS,
    HelperRound,
)
from strategies import PlannedSplitStrategy, SplitStrategy
from strategies.split import ROUTED
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode
from tests.unit.strategies.test_split_strategy import CLIENTS, HELPERS, RecordingFedAvg

EXAMPLE = torch.zeros(2, 1, 8, 8)
ACCURACY = "accuracy"


class AppFedAvg(RecordingFedAvg):
    """A FedAvg subclass with its own start(), private helpers and state of its own."""

    def set_save_path_and_run_dir(self, path, run_dir):
        self.save_path = path
        self.run_dir = run_dir

    def configure_train(self, server_round, arrays, config, grid):
        self.train_rounds.append(server_round)  # its own override still runs
        return super().configure_train(server_round, arrays, config, grid)

    def _update_best(self, server_round, accuracy, arrays):
        if accuracy > self.best_acc_so_far:
            self.best_acc_so_far = accuracy
            path = self.save_path / f"{self.run_dir}-best-round-{server_round}.pt"
            torch.save(arrays.to_torch_state_dict(), path)

    def _save_results(self, result):
        rounds = sorted(result.train_metrics_clientapp)
        rows = [
            {
                "round": r,
                "train": dict(result.train_metrics_clientapp[r]),
                "evaluate": dict(result.evaluate_metrics_clientapp.get(r, {})),
                "server": dict(result.evaluate_metrics_serverapp.get(r, {})),
            }
            for r in rounds
        ]
        (self.save_path / "results.json").write_text(json.dumps(rows))

    def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, train_config=None,
              evaluate_config=None, evaluate_fn=None):
        self.train_rounds = []
        self.best_acc_so_far = 0.0
        self.summary()
        result = Result()
        arrays = initial_arrays
        for current_round in range(1, num_rounds + 1):
            replies = grid.send_and_receive(
                self.configure_train(current_round, arrays, train_config or ConfigRecord(),
                                     grid),
                timeout=timeout,
            )
            new_arrays, metrics = self.aggregate_train(current_round, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if metrics is not None:
                result.train_metrics_clientapp[current_round] = metrics
            replies = grid.send_and_receive(
                self.configure_evaluate(current_round, arrays,
                                        evaluate_config or ConfigRecord(), grid),
                timeout=timeout,
            )
            metrics = self.aggregate_evaluate(current_round, replies)
            if metrics is not None:
                result.evaluate_metrics_clientapp[current_round] = metrics
            if evaluate_fn is not None:
                res = evaluate_fn(current_round, arrays)
                if res is not None:
                    result.evaluate_metrics_serverapp[current_round] = res
                    self._update_best(current_round, res[ACCURACY], arrays)
        self._save_results(result)
        self.returned = result
        return result


def _nodes():
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    for i, c in enumerate(CLIENTS):
        nodes[c] = FakeNode(ROLE_CLIENT, examples=10, fill=float(i + 1))
    return nodes


def _wrapped_app(tmp_path, cls=SplitStrategy, **kwargs):
    model = SmallCNN()
    inner = AppFedAvg(fraction_evaluate=1.0)
    strategy = cls.for_model(model, EXAMPLE, cuts="conv2,fc2", strategy=inner, **kwargs)
    strategy.set_save_path_and_run_dir(tmp_path, "run-1")  # its own method, on the wrapper
    grid = FakeGrid(_nodes(), strategy.piece_keys)
    return strategy, inner, grid, ArrayRecord(model.state_dict())


def _evaluate(server_round, arrays):
    return MetricRecord({ACCURACY: 0.1 * server_round})


def test_a_strategy_with_its_own_start_runs_it_with_split_rounds_inside(tmp_path):
    strategy, inner, grid, arrays = _wrapped_app(tmp_path)

    result = strategy.start(grid, arrays, num_rounds=2, evaluate_fn=_evaluate)

    assert result is inner.returned  # its start ran, on its own object, and its result
    assert inner.train_rounds == [1, 2]
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count(HELPER_TRAIN) == 2 * len(HELPERS)
    assert kinds.count(CLIENT_TRAIN) == 2 * len(CLIENTS)
    assert kinds.count(MessageType.TRAIN) == 0  # no plain federated training
    # the full model, assembled from every client's head, tail and helper body, aggregated
    assert len(inner.aggregated) == len(CLIENTS)
    for reply in inner.aggregated:
        assert list(reply.content[ARRAYS].keys()) == strategy.full_keys
    state = result.arrays.to_torch_state_dict()
    assert list(state) == strategy.full_keys
    mean_fill = sum(n.fill for n in grid.nodes.values() if not n.is_helper) / len(CLIENTS)
    floats = [t for t in state.values() if t.is_floating_point()]
    assert floats and all(torch.allclose(t, torch.full_like(t, mean_fill)) for t in floats)
    # what its start does besides: the results file, best-model checkpoints
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["round"] for row in rows] == [1, 2]
    assert rows[0]["train"][TRAIN_LOSS] == pytest.approx(mean_fill)
    assert rows[1]["evaluate"][EVAL_LOSS] == pytest.approx(mean_fill)
    assert rows[1]["server"][ACCURACY] == pytest.approx(0.2)
    assert inner.best_acc_so_far == pytest.approx(0.2)
    best = torch.load(tmp_path / "run-1-best-round-2.pt")
    assert list(best) == strategy.full_keys
    # the routing is gone afterwards: the wrapped strategy is plain itself again
    assert not set(ROUTED) & set(vars(inner))
    assert inner.configure_train.__func__ is AppFedAvg.configure_train


def test_the_split_code_sees_rounds_shifted_by_round_offset(tmp_path):
    strategy, inner, grid, arrays = _wrapped_app(tmp_path, round_offset=4)
    strategy.start(grid, arrays, num_rounds=2, evaluate_fn=_evaluate)
    assert inner.train_rounds == [5, 6]
    helper_rounds = [
        HelperRound.from_config(m.content[CONFIG]).server_round
        for m in grid.sent
        if m.metadata.message_type == HELPER_TRAIN
    ]
    assert helper_rounds == [5, 5, 6, 6]
    assert sorted(strategy.round_times) == [5, 6]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["round"] for row in rows] == [1, 2]  # its own loop counts Flower's rounds


def test_a_planned_strategy_runs_the_wrapped_start_too(tmp_path):
    strategy, inner, grid, arrays = _wrapped_app(
        tmp_path, cls=PlannedSplitStrategy, planner="greedy", time_limit=0.2, batch_size=8
    )
    result = strategy.start(grid, arrays, num_rounds=1)
    assert result is inner.returned
    assert [entry["round"] for entry in strategy.history] == [1]
    assert len(inner.aggregated) == len(CLIENTS)
    assert (tmp_path / "results.json").exists()


def test_a_failing_start_leaves_the_wrapped_strategy_unrouted(tmp_path):
    strategy, inner, grid, arrays = _wrapped_app(tmp_path)

    def broken(server_round, arrays):
        raise RuntimeError("evaluation data missing")

    with pytest.raises(RuntimeError, match="evaluation data missing"):
        strategy.start(grid, arrays, num_rounds=1, evaluate_fn=broken)
    assert not set(ROUTED) & set(vars(inner))
    assert strategy.start(grid, arrays, num_rounds=1) is inner.returned  # runs again


def test_a_strategy_without_its_own_start_runs_flowers_loop_on_the_wrapper():
    model = SmallCNN()
    inner = RecordingFedAvg(fraction_evaluate=1.0)
    strategy = SplitStrategy.for_model(model, EXAMPLE, cuts="conv2,fc2", strategy=inner)
    grid = FakeGrid(_nodes(), strategy.piece_keys)
    result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=2)
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert list(result.arrays.keys()) == strategy.full_keys
    assert [m.metadata.message_type for m in grid.sent].count(HELPER_TRAIN) == 2 * len(HELPERS)
    assert not set(ROUTED) & set(vars(inner))


def test_attributes_the_wrapper_lacks_are_set_on_the_wrapped_strategy(tmp_path):
    class WithHistory(AppFedAvg):
        def __init__(self):
            super().__init__()
            self.history = ["its own"]  # a name PlannedSplitStrategy uses too

    inner = WithHistory()
    strategy = PlannedSplitStrategy.for_model(
        SmallCNN(), EXAMPLE, "conv2,fc2", inner, planner="greedy", time_limit=0.2
    )
    assert inner.history == ["its own"] and strategy.history == []  # each keeps its own
    strategy.fraction_evaluate = 0.5  # the wrapped strategy's setting
    strategy.save_path = tmp_path  # what its start reads, set by the app on the wrapper
    strategy.round_timeout = 5.0  # the wrapper's own
    assert inner.fraction_evaluate == 0.5 and inner.save_path == tmp_path
    assert "fraction_evaluate" not in vars(strategy) and "save_path" not in vars(strategy)
    assert strategy.save_path == tmp_path and strategy.round_timeout == 5.0
    assert not hasattr(inner, "round_timeout")


def test_a_legacy_or_foreign_strategy_is_refused_with_its_replacement():
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    with pytest.raises(ValueError, match=r"instead of the legacy flwr\.server\.strategy"):
        SplitStrategy.for_model(SmallCNN(), EXAMPLE, "conv2,fc2", LegacyFedAvg())
    with pytest.raises(ValueError, match=r"Message-API strategy .*not builtins\.object"):
        SplitStrategy.for_model(SmallCNN(), EXAMPLE, "conv2,fc2", object())


def test_a_split_strategy_is_not_wrapped_twice():
    once = SplitStrategy.for_model(SmallCNN(), EXAMPLE, "conv2,fc2", FedAvg())
    with pytest.raises(ValueError, match=r"already a split strategy.*its \.strategy"):
        SplitStrategy.for_model(SmallCNN(), EXAMPLE, "conv2,fc2", once)


def test_a_start_override_with_a_strategy_method_as_property_is_refused():
    class Fixed(AppFedAvg):
        @property
        def aggregate_evaluate(self):
            return lambda server_round, replies: None

    with pytest.raises(ValueError, match="aggregate_evaluate cannot be replaced"):
        SplitStrategy.for_model(SmallCNN(), EXAMPLE, "conv2,fc2", Fixed())
