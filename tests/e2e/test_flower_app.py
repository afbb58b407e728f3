"""A Flower app with its own train/evaluate handlers, switched to split learning, run
in-process through Flower's Python simulation API (test_flsplit_simulate.py runs it with
``flwr run``)."""

import torch
from flwr.simulation import run_simulation

from flsplit.simulation import backend_config_for
from tests.e2e.flower_app import app as flower_app


def test_flower_style_app_trains_through_its_helper(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the app's ServerApp saves final_model.pt
    run_simulation(
        server_app=flower_app.server,
        client_app=flower_app.client,
        num_supernodes=4,
        backend_config=backend_config_for(4),
    )
    assert len(flower_app.RESULTS) == 1
    initial, result, strategy = flower_app.RESULTS[0]
    assert len(strategy.helpers) == 1 and len(strategy.clients) == 3
    before, after = initial.to_torch_state_dict(), result.arrays.to_torch_state_dict()
    for key in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"):
        assert not torch.allclose(before[key], after[key]), key
    # the app's own evaluate handler ran on the clients (helpers excluded)
    assert set(result.evaluate_metrics_clientapp) == {1, 2}
    for server_round, metrics in result.evaluate_metrics_clientapp.items():
        # it saw the partitions flsplit trains on: 0, 1, 2 of 3 (one node is the helper)
        assert metrics["num-partitions"] == 3
        assert metrics["partition-id"] == 1  # their mean, weighted by equal shard sizes
        # the app's state in context.state was kept across the split rounds
        assert metrics["rounds-trained"] == server_round
    assert (tmp_path / "final_model.pt").exists()
