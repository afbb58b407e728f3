"""Checkpoints after every round, resuming a stopped run, and the minimum of clients."""

from pathlib import Path

import numpy as np
from quickstart.task import TASK

from flsplit.checkpoint import load_checkpoint
from flsplit.simulation import simulate

BASE = {
    "num-helpers": 1,
    "num-clients": 3,
    "cuts": "conv2,fc2",
    "lr": 0.05,
    "momentum": 0.9,
    "round-timeout": 120.0,
}


def _run(config):
    runs = []
    simulate(TASK, {**BASE, **config}, on_result=lambda *run: runs.append(run))
    assert len(runs) == 1, "the ServerApp did not finish"
    return runs[0]


def test_a_restarted_run_continues_from_the_last_completed_round(tmp_path: Path):
    directory = str(tmp_path / "ckpt")
    _, first, _ = _run({"num-server-rounds": 1, "checkpoint-dir": directory})
    saved = load_checkpoint(directory)
    assert saved is not None and saved.server_round == 1
    final = first.arrays.to_numpy_ndarrays()
    for key, value in zip(first.arrays.keys(), final, strict=True):
        np.testing.assert_array_equal(saved.arrays[key], value)
    assert set(saved.state["round_times"]) == {"1"}

    # The same run config with one more round: only round 2 runs, from round 1's model.
    initial, resumed, strategy = _run({"num-server-rounds": 2, "checkpoint-dir": directory})
    for key, value in zip(initial.keys(), initial.to_numpy_ndarrays(), strict=True):
        np.testing.assert_array_equal(saved.arrays[key], value)
    assert set(resumed.train_metrics_clientapp) == {2}
    assert set(strategy.round_times) == {1, 2}
    assert load_checkpoint(directory).server_round == 2


def test_a_round_with_too_few_complete_updates_keeps_the_model():
    _, result, _ = _run({"num-server-rounds": 1, "min-completed-clients": 4})
    assert result.train_metrics_clientapp == {}
    server = result.evaluate_metrics_serverapp
    assert server[1]["test_loss"] == server[0]["test_loss"]
