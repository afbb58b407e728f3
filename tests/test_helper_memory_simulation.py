"""End to end in Flower's simulation engine with the helper's shared memory mode."""

import torch
from quickstart.task import TASK

from flsplit.simulation import simulate


def test_shared_helper_memory_trains_every_layer():
    runs = []
    config = {
        "num-server-rounds": 2,
        "num-helpers": 1,
        "num-clients": 3,
        "cuts": "conv2,fc2",
        "lr": 0.05,
        "momentum": 0.9,
        "round-timeout": 120.0,
        "helper-memory": "shared",
    }
    simulate(TASK, config, on_result=lambda *run: runs.append(run))
    assert len(runs) == 1, "the ServerApp did not finish"
    initial, result, strategy = runs[0]
    before = initial.to_torch_state_dict()
    after = result.arrays.to_torch_state_dict()
    for keys in (strategy.head_keys, strategy.body_keys, strategy.tail_keys):
        for key in (k for k in keys if k.endswith("weight")):
            assert not torch.allclose(before[key], after[key]), key
    train = result.train_metrics_clientapp
    assert train[2]["train_loss"] < train[1]["train_loss"]
    server = result.evaluate_metrics_serverapp
    assert server[2]["test_loss"] < server[0]["test_loss"]
