"""A round in simulation with a helper on the GPU (``device`` is ``auto`` by default)."""

import pytest
import torch
from flwr.simulation import run_simulation

from flsplit.simulation import backend_config_for
from tests.e2e.flower_app import app as flower_app


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())"
)
def test_a_round_with_a_gpu_helper_trains():
    flower_app.RESULTS.clear()
    run_simulation(
        server_app=flower_app.server,
        client_app=flower_app.client,
        num_supernodes=3,
        backend_config=backend_config_for(3),
    )
    initial, result, strategy = flower_app.RESULTS[0]
    helper = strategy.nodes[strategy.helpers[0]].report
    assert helper.compute_device.startswith("cuda")
    before, after = initial.to_torch_state_dict(), result.arrays.to_torch_state_dict()
    assert not torch.allclose(before["conv2.weight"], after["conv2.weight"])
