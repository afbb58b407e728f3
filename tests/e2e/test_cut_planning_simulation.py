"""Cut pairs chosen every round from live measurements, in a simulated run."""

import json

import torch
from flwr.simulation import run_simulation
from quickstart.task import TASK

from flsplit.client.app import make_client_app
from flsplit.protocol import ROLE_CLIENT
from flsplit.server.app import make_server_app
from flsplit.simulation import backend_config_for


def test_simulated_rounds_train_every_layer_with_per_client_cut_pairs(tmp_path):
    """One client computes 120x slower: it gets a different pair from the fast clients."""
    config = {
        "num-server-rounds": 2,
        "num-helpers": 1,
        "cuts": "relu1,fc2",
        "cut-candidates": "relu1,fc2;fc1,fc2",
        "planner": "auto",
        "planner-time-limit": 0.5,
        "emulate": True,
        "client-devices": "jetson-gpu",
        "helper-devices": "vm",
        "link-mbps": 20,
        "slowdown": "client:0:120:0",
        "torch-threads": 1,
        "call-deadline": 30.0,
        "round-timeout": 120.0,
        "lr": 0.05,
        "momentum": 0.9,
        "output-dir": str(tmp_path),
    }
    runs = []
    server = make_server_app(TASK, config, on_result=lambda *run: runs.append(run))
    client_app = make_client_app(TASK, config)
    run_simulation(server, client_app, 4, backend_config=backend_config_for(4))
    assert runs, "the ServerApp did not finish"
    initial, result, strategy = runs[0]

    assert set(result.train_metrics_clientapp) == {1, 2}
    assert len(strategy.history) == 2
    slow = next(
        n for n, i in strategy.nodes.items() if i.role == ROLE_CLIENT and i.index == 0
    )
    for entry in strategy.history:
        saved = json.loads((tmp_path / f"round-{entry['round']}.json").read_text())
        assert saved["cuts"] == entry["cuts"] and saved["cut_counts"] == entry["cut_counts"]
        assert sum(entry["cut_counts"].values()) == 3
        # every client trained to the end with its helper: nothing failed
        assert len(entry["client_spans_ms"]) == 3
        assert {t["client"] for t in entry["measured_tasks"]} == set(strategy.clients)
        assert entry["cuts"][str(slow)] == "relu1,fc2"  # the least client-side work
    counts = [entry["cut_counts"] for entry in strategy.history]
    assert any(len(c) >= 2 for c in counts), counts  # fast clients took "fc1,fc2"

    before, after = initial.to_torch_state_dict(), result.arrays.to_torch_state_dict()
    layers = [k for k, v in before.items() if v.is_floating_point()]
    assert {k.split(".")[0] for k in layers} == {"conv1", "conv2", "bn2", "fc1", "fc2"}
    for key in layers:
        assert not torch.allclose(before[key], after[key]), f"{key} did not change"
