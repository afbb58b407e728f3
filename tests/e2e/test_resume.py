"""Checkpoints after every round, resuming a stopped run, and the minimum of clients."""

import json
from pathlib import Path

import numpy as np

from flsplit.protocol import TEST_LOSS
from flsplit.server.checkpoint import load_checkpoint
from tests.e2e.small_run import run_small


def test_a_restarted_run_continues_from_the_last_completed_round(tmp_path: Path):
    directory = str(tmp_path / "ckpt")
    out = tmp_path / "out"
    _, first, _ = run_small(
        {"num-server-rounds": 1, "checkpoint-dir": directory, "output-dir": str(out)}
    )
    before = json.loads((out / "history.json").read_text())
    saved = load_checkpoint(directory)
    assert saved is not None and saved.server_round == 1
    final = first.arrays.to_numpy_ndarrays()
    for key, value in zip(first.arrays.keys(), final, strict=True):
        np.testing.assert_array_equal(saved.arrays[key], value)
    assert set(saved.state["round_times"]) == {"1"}

    # The same run config with one more round (and a longer round timeout, which may
    # change): only round 2 runs, from round 1's model.
    initial, resumed, strategy = run_small({
        "num-server-rounds": 2, "checkpoint-dir": directory, "output-dir": str(out),
        "round-timeout": 240.0,
    })
    for key, value in zip(initial.keys(), initial.to_numpy_ndarrays(), strict=True):
        np.testing.assert_array_equal(saved.arrays[key], value)
    assert set(resumed.train_metrics_clientapp) == {2}
    assert set(strategy.round_times) == {1, 2}
    assert load_checkpoint(directory).server_round == 2
    history = json.loads((out / "history.json").read_text())  # round 1 kept, round 2 added
    assert set(history["train"]) == {"1", "2"}
    assert history["train"]["1"] == before["train"]["1"]
    assert set(history["server"]) == {"0", "1", "2"}


def test_a_round_with_too_few_complete_updates_keeps_the_model():
    _, result, _ = run_small({"num-server-rounds": 1, "min-completed-clients": 4})
    assert result.train_metrics_clientapp == {}
    server = result.evaluate_metrics_serverapp
    assert server[1][TEST_LOSS] == server[0][TEST_LOSS]


def test_node_profiles_survive_a_checkpoint_as_json():
    import json

    from flsplit.server.round_planner import PartCosts, RoundPlanner

    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 4096, 1024, 12.0)
    planner = RoundPlanner(costs, lambda c, h: (10.0, 1.0), method="greedy", time_limit=0.2)
    planner.add_client(1, compute_factor=3.0)
    planner.add_client(2)
    planner.add_helper(7, compute_factor=0.5, memory_mib=512.0)
    planner.add_helper(8)  # unlimited memory: infinite in JSON
    planner.observe_client(1, 7, 40.0, 25.0, 30.0, start_offset_ms=15.0)
    planner.observe_helper(7, 11.0, 17.0)

    restored = RoundPlanner(costs, lambda c, h: (10.0, 1.0), method="greedy", time_limit=0.2)
    restored.load_state_dict(json.loads(json.dumps(planner.state_dict())))
    assert restored.clients == planner.clients
    assert restored.helpers == planner.helpers
    before = planner.instance([1, 2], [7, 8])
    after = restored.instance([1, 2], [7, 8])
    for name in ("head_fwd_up", "body_fwd", "tail_fwd_bwd", "body_bwd", "down_head_bwd"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))
