"""history.json after every round, written atomically, and kept across a resume.

The strategy runs Flower's round loop over a fake grid with the ServerApp's hooks (a
checkpoint, then history.json, after every round); a run "dies" when its server-side
evaluation raises in some round, which leaves exactly what a killed ServerApp leaves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord

from flsplit.model.zoo import SmallCNN
from flsplit.protocol import (
    BYTES_DOWN,
    BYTES_UP,
    DATA_PLANE_BYTES,
    EVAL_LOSS,
    ROLE_CLIENT,
    ROLE_HELPER,
    ROUND_WALL_SECONDS,
    TRAIN_LOSS,
)
from flsplit.server import atomic
from flsplit.server.checkpoint import checkpoint_writer, load_checkpoint
from flsplit.server.history import history_writer, resumed_state, write_history
from strategies import SplitStrategy
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode
from tests.unit.strategies.test_split_strategy import CLIENTS, HELPERS, RecordingFedAvg

EXAMPLE = torch.zeros(2, 1, 8, 8)
ACCURACY = "accuracy"
CONFIG = {"lr": 0.05, "seed": 0}


class KilledError(Exception):
    """Stands for the ServerApp being killed."""


def _strategy(tmp_path: Path, offset: int = 0, fill: float = 1.0, hooks: list | None = None):
    """A split strategy whose on_round_end writes a checkpoint and then history.json, as
    the ServerApp's does, over a fake grid whose clients return ``fill + i``."""
    model = SmallCNN()
    writers = hooks if hooks is not None else [
        checkpoint_writer(str(tmp_path / "ckpt"), CONFIG),
        history_writer(tmp_path / "out"),
    ]

    def on_round_end(server_round, arrays, strategy):
        for write in writers:
            write(server_round, arrays, strategy)

    strategy = SplitStrategy.for_model(
        model, EXAMPLE, cuts="conv2,fc2", strategy=RecordingFedAvg(fraction_evaluate=1.0),
        round_offset=offset, on_round_end=on_round_end,
    )
    nodes = {h: FakeNode(ROLE_HELPER) for h in HELPERS}
    for i, c in enumerate(CLIENTS):
        nodes[c] = FakeNode(ROLE_CLIENT, examples=10, fill=fill + i)
    return strategy, FakeGrid(nodes, strategy.piece_keys), ArrayRecord(model.state_dict())


def _evaluation(dies_in: int | None = None, accuracy: float = 0.1):
    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == dies_in:
            raise KilledError(f"killed while evaluating round {server_round}")
        return MetricRecord({ACCURACY: accuracy * (server_round + 1)})

    return evaluate


def _history(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "history.json").read_text())


def test_a_run_killed_in_round_3_leaves_the_history_of_rounds_1_and_2(tmp_path):
    strategy, grid, arrays = _strategy(tmp_path)
    with pytest.raises(KilledError):
        strategy.start(grid, arrays, num_rounds=5, evaluate_fn=_evaluation(dies_in=3))

    history = _history(tmp_path)
    assert set(history["train"]) == {"1", "2"}
    assert set(history["evaluate"]) == {"1", "2"}
    assert set(history["server"]) == {"0", "1", "2"}
    assert set(history[ROUND_WALL_SECONDS]) == {"1", "2"}
    assert history["train"]["2"][TRAIN_LOSS] == pytest.approx(2.0)  # mean of 1, 2, 3
    assert history["server"]["2"][ACCURACY] == pytest.approx(0.3)
    # the checkpoint holds the same rounds
    saved = load_checkpoint(tmp_path / "ckpt", CONFIG)
    assert saved is not None and saved.server_round == 2
    assert set(saved.state["results"]["train"]) == {"1", "2"}


def test_a_round_ends_after_its_server_side_evaluation(tmp_path):
    seen = []

    def hook(server_round, arrays, strategy):
        # what history.json gets at the end of round r: round r's evaluations too
        seen.append((server_round, sorted(strategy.results["server"]),
                     sorted(strategy.results["evaluate"])))

    strategy, grid, arrays = _strategy(tmp_path, hooks=[hook])
    strategy.start(grid, arrays, num_rounds=2, evaluate_fn=_evaluation())
    assert seen == [(1, [0, 1], [1]), (2, [0, 1, 2], [1, 2])]


def test_without_server_side_evaluation_a_round_ends_when_the_next_starts(tmp_path):
    seen = []
    strategy, grid, arrays = _strategy(
        tmp_path, hooks=[lambda r, a, s: seen.append((r, len(grid.sent)))]
    )
    strategy.start(grid, arrays, num_rounds=3)
    assert [r for r, _ in seen] == [1, 2, 3]  # the last one when the run ended
    assert seen[0][1] < seen[1][1] < seen[2][1]  # each once its round's messages were sent


def test_a_resumed_run_keeps_the_rounds_before_it(tmp_path):
    first, grid, arrays = _strategy(tmp_path, fill=1.0)
    with pytest.raises(KilledError):
        first.start(grid, arrays, num_rounds=4, evaluate_fn=_evaluation(dies_in=3))
    before = _history(tmp_path)

    # The ServerApp started again: it resumes after round 2 with the checkpoint's state;
    # its clients now train to other values, and its evaluation differs too.
    saved = load_checkpoint(tmp_path / "ckpt", CONFIG)
    resumed, grid, _ = _strategy(tmp_path, offset=saved.server_round, fill=5.0)
    resumed.load_state(resumed_state(saved.state, tmp_path / "out", saved.server_round))
    resumed.start(grid, arrays, num_rounds=2, evaluate_fn=_evaluation(accuracy=0.01))

    history = _history(tmp_path)
    assert set(history["train"]) == {"1", "2", "3", "4"}
    assert set(history["server"]) == {"0", "1", "2", "3", "4"}
    assert set(history[ROUND_WALL_SECONDS]) == {"1", "2", "3", "4"}
    for kind in ("train", "evaluate", "server"):
        for r in ("1", "2"):
            assert history[kind][r] == before[kind][r]  # as the first run recorded them
    # round 0 of the resumed run evaluated round 2's model again: the first run's stays
    assert history["server"]["2"][ACCURACY] == pytest.approx(0.3)
    assert history["train"]["3"][TRAIN_LOSS] == pytest.approx(6.0)  # the resumed run's
    assert history["server"]["4"][ACCURACY] == pytest.approx(0.03)
    assert load_checkpoint(tmp_path / "ckpt", CONFIG).server_round == 4


def test_rounds_after_the_checkpoint_are_replaced_by_the_resumed_runs(tmp_path):
    # A checkpoint that does not hold the rounds' metrics (written by an earlier flsplit)
    # at round 2, and a history.json that went on to round 3: the resumed run takes
    # rounds 1 and 2 from history.json and runs round 3 again.
    strategy, grid, arrays = _strategy(tmp_path, hooks=[history_writer(tmp_path / "out")])
    strategy.start(grid, arrays, num_rounds=3, evaluate_fn=_evaluation())
    before = _history(tmp_path)
    old_state = {"round_times": {"1": 0.5, "2": 0.5}}

    state = resumed_state(old_state, tmp_path / "out", 2)
    assert set(state["results"]["train"]) == {"1", "2"}
    assert state["round_times"] == {"1": 0.5, "2": 0.5}  # the checkpoint's own wins

    resumed, grid, _ = _strategy(tmp_path, offset=2, fill=5.0,
                                 hooks=[history_writer(tmp_path / "out")])
    resumed.load_state(state)
    resumed.start(grid, arrays, num_rounds=1, evaluate_fn=_evaluation())
    history = _history(tmp_path)
    assert history["train"]["2"] == before["train"]["2"]
    assert history["train"]["3"][TRAIN_LOSS] == pytest.approx(6.0)
    assert before["train"]["3"][TRAIN_LOSS] == pytest.approx(2.0)
    assert history["evaluate"]["3"][EVAL_LOSS] == pytest.approx(6.0)


def test_a_failed_write_leaves_the_previous_history(tmp_path, monkeypatch):
    strategy, grid, arrays = _strategy(tmp_path, hooks=[])
    strategy.start(grid, arrays, num_rounds=1, evaluate_fn=_evaluation())
    path = write_history(tmp_path / "out", strategy)
    before = path.read_bytes()

    def disk_full(obj, stream, **kwargs):
        stream.write('{"train": {"1": {"tra')  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.json, "dump", disk_full)
    strategy.round_times[2] = 1.0
    with pytest.raises(OSError, match="No space"):
        write_history(tmp_path / "out", strategy)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["history.json"]  # no temporary left


def test_every_clients_data_plane_bytes_are_kept_per_round_and_across_a_resume(tmp_path):
    first, grid, arrays = _strategy(tmp_path, fill=1.0)
    with pytest.raises(KilledError):
        first.start(grid, arrays, num_rounds=4, evaluate_fn=_evaluation(dies_in=3))
    moved = _history(tmp_path)[DATA_PLANE_BYTES]
    assert set(moved) == {"1", "2"}
    assert sorted(b[BYTES_UP] for b in moved["2"].values()) == [100, 200, 300]
    assert sorted(b[BYTES_DOWN] for b in moved["2"].values()) == [200, 400, 600]
    assert BYTES_UP not in _history(tmp_path)["train"]["2"]  # not aggregated as a metric

    saved = load_checkpoint(tmp_path / "ckpt", CONFIG)
    resumed, grid, _ = _strategy(tmp_path, offset=saved.server_round, fill=5.0)
    resumed.load_state(resumed_state(saved.state, tmp_path / "out", saved.server_round))
    resumed.start(grid, arrays, num_rounds=1, evaluate_fn=_evaluation())
    after = _history(tmp_path)[DATA_PLANE_BYTES]
    assert after["2"] == moved["2"]
    assert sorted(b[BYTES_UP] for b in after["3"].values()) == [500, 600, 700]
