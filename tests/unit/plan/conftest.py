"""Shared fixtures and strategies for the planner tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

from flsplit.plan.instance import Instance


def make_instance(
    stages: dict[str, list[list[float]]],
    memory: list[float] | None = None,
    capacity: list[float] | None = None,
) -> Instance:
    """Instance from explicit stage matrices (clients c0.., helpers h0..)."""
    shape = np.asarray(stages["body_fwd"]).shape
    return Instance(
        client_ids=[f"c{k}" for k in range(shape[0])],
        helper_ids=[f"h{j}" for j in range(shape[1])],
        body_memory=memory if memory is not None else [1.0] * shape[0],
        helper_memory=capacity if capacity is not None else [float(shape[0])] * shape[1],
        **{name: np.asarray(value, dtype=float) for name, value in stages.items()},
    )


def uniform(num_clients: int, num_helpers: int, **values: float) -> Instance:
    """Instance where every stage ``name`` has the same value for all pairs."""
    return make_instance({name: [[value] * num_helpers] * num_clients
                          for name, value in values.items()})


@st.composite
def small_instances(draw: st.DrawFn, max_clients: int = 5, max_helpers: int = 3) -> Instance:
    """Random small integer instances with feasible (sometimes binding) memory."""
    num_clients = draw(st.integers(1, max_clients))
    num_helpers = draw(st.integers(1, max_helpers))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    names = ("head_fwd_up", "body_fwd", "tail_fwd_bwd", "body_bwd", "down_head_bwd")
    stages = {}
    for name in names:
        low = 1 if name in ("body_fwd", "body_bwd") else 0
        stages[name] = rng.integers(low, 12, size=(num_clients, num_helpers)).tolist()
    memory = rng.integers(1, 3, size=num_clients).astype(float)
    # ceil(total / H) + largest - 1 guarantees that largest-first packing succeeds
    per_helper = np.ceil(memory.sum() / num_helpers) + memory.max() - 1 + rng.integers(0, 2)
    return make_instance(stages, memory.tolist(), [float(per_helper)] * num_helpers)


@pytest.fixture
def profile_dir(tmp_path: Path) -> Path:
    """A tiny synthetic profile directory in the shared profile format."""
    layers = 40  # deeper than both published cut sets
    devices = {}
    speeds = {"vm-8vcpu": 1.0, "laptop": 2.0, "rpi4": 20.0, "rpi3": 30.0,
              "jetson-gpu": 5.0, "jetson-cpu": 40.0}
    for name, speed in speeds.items():
        devices[name] = {
            "role": "helper" if name in ("vm-8vcpu", "laptop") else "client",
            "forward_ms": [speed] * layers,
            "backward_ms": [2 * speed] * layers,
            "update_ms": [0.0] * layers,
        }
    profile = {
        "model": "toy",
        "layers": [{"activation_kib": 100.0 + i, "weights_kib": 10.0}
                   for i in range(layers)],
        "devices": devices,
    }
    for file in ("resnet101_cifar10.json", "vgg19_cifar10.json"):
        (tmp_path / file).write_text(json.dumps(profile))
    return tmp_path
