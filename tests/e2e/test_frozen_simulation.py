"""A frozen base end to end in Flower's simulation engine: adapters trained through a
helper, the base sent once per node (kept in its Context.state across ClientApp calls
on any Ray worker) and bit for bit unchanged after the rounds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flsplit import SplitTask
from flsplit.model.frozen import frozen_keys
from flsplit.model.zoo import AdaptedMLP
from flsplit.simulation import simulate


def model_fn(config: Mapping[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)  # the same base everywhere (a pretrained checkpoint in practice)
    return AdaptedMLP(inputs=16, width=32, num_classes=2, rank=4, depth=2)


def _data(seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(96, 16, generator=generator)
    return TensorDataset(inputs, (inputs[:, 0] + inputs[:, 1] > 0).long())


def load_data(partition: int, partitions: int, config: Mapping[str, Any]) -> tuple:
    return DataLoader(_data(partition), batch_size=16, shuffle=False), DataLoader(_data(99))


TASK = SplitTask(
    model_fn=model_fn,
    load_data=load_data,
    example_input=lambda config: torch.zeros(2, 16),
    load_test_data=lambda config: DataLoader(_data(100), batch_size=32),
)


RUN = {"num-server-rounds": 3, "num-helpers": 1, "num-clients": 2, "cuts": "hidden0,norm",
       "lr": 0.1, "fraction-evaluate": 0.0, "round-timeout": 120.0}


@pytest.mark.parametrize(
    "settings",
    [
        # one body (and one base) for both clients; per-client bodies sharing the base are
        # tested in tests/unit/client/test_base_cache.py
        {"helper-memory": "shared"},
        # synchronous steps: the clients' trainable gradients all-reduced, not the base's
        {"sampler": "uniform", "global-batch-size": 32},
    ],
    ids=["shared-memory", "sync-steps"],
)
def test_adapters_train_and_the_base_travels_once(settings):
    runs = []
    simulate(TASK, {**RUN, **settings}, on_result=lambda *run: runs.append(run))
    assert len(runs) == 1, "the ServerApp did not finish"
    initial, result, strategy = runs[0]
    frozen = frozen_keys(model_fn({}))
    before = initial.to_torch_state_dict()
    after = result.arrays.to_torch_state_dict()
    assert list(after) == list(before)
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    for key in ("fc_in.up.weight", "hidden0.up.weight", "hidden1.up.weight", "fc_out.weight"):
        assert not torch.equal(after[key], before[key]), key
    assert not torch.equal(after["norm.running_mean"], before["norm.running_mean"])
    assert set(strategy.param_bytes) == {1, 2, 3}
    assert strategy.param_bytes[1]["sent-base"] > 0
    assert strategy.param_bytes[2]["sent-base"] == strategy.param_bytes[3]["sent-base"] == 0
    assert not any(strategy.failures.values())
