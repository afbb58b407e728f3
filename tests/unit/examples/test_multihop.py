"""examples/multihop without the simulation engine: its run config asks for planned
chains, and no helper can hold the bodies of all the clients it would serve, for the
example's small model (its emulated memory) as for VGG-19 (the published profile)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from flsplit.config import RunConfig
from flsplit.model.presets import preset
from flsplit.model.profile import profile_model
from flsplit.model.splitting import candidate_cuts, parse_cuts, split_model
from tests.paths import ROOT, SHARED_PROFILES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MULTIHOP = ROOT / "examples" / "multihop"
if str(MULTIHOP) not in sys.path:
    sys.path.insert(0, str(MULTIHOP))

from multihop.task import TASK  # noqa: E402

CONFIG = tomllib.loads((MULTIHOP / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
    "config"]


def _served(config: RunConfig) -> int:
    """Clients a helper would serve when all share the helpers evenly."""
    return math.ceil(config.num_clients / config.num_helpers)


def test_the_example_plans_chains_on_emulated_devices_and_published_links():
    config = RunConfig.parse(CONFIG)
    assert config.planned_chains and config.chain.auto and config.emulate
    assert config.link_mbps == "1-4:30,5-10:42,11-15:12,16-20:28"
    assert set(config.client_devices.split(",")) == {"rpi3", "rpi4", "jetson-gpu", "laptop"}
    baseline = RunConfig.parse(CONFIG, {"planner": "round-robin", "chain-length": 2})
    assert not baseline.planned_chains and baseline.chain.length == 2


def test_no_helper_holds_the_small_bodies_of_all_the_clients_it_would_serve():
    config = RunConfig.parse(CONFIG)
    values = config.as_dict()
    model = TASK.model_fn(values)
    batch = torch.zeros(config.batch_size, 1, 8, 8)
    profile = profile_model(model, batch, cuts=candidate_cuts(model, batch), repeats=1,
                            warmup=0)
    names = [layer["name"] for layer in profile["layers"]]
    cuts = split_model(model, parse_cuts(config.cuts or None), batch).cuts  # default U
    c1, c2 = (names.index(c) for c in cuts)
    body_mib = sum(layer["memory_kib"] for layer in profile["layers"][c1:c2]) / 1024
    for device in config.helper_devices.split(","):
        memory = preset(device).memory_mib * config.emulation_memory_scale
        # at least two bodies, as a Jetson holds two VGG-19 bodies, but not all three
        assert 2 * body_mib <= memory < _served(config) * body_mib


@pytest.mark.skipif(not SHARED_PROFILES.is_dir(), reason="needs ../shared/profiles")
def test_no_helper_holds_the_vgg19_bodies_of_all_the_clients_it_would_serve():
    config = RunConfig.parse(CONFIG)
    data = json.loads((SHARED_PROFILES / "vgg19_cifar10.json").read_text())
    scale = config.batch_size / data["batch_size_inferred"]
    layers = data["layers"][1:-1]  # the body between the first and last layer
    body_mib = sum(3 * x["weights_kib"] + x["activation_kib"] * scale for x in layers) / 1024
    for device in config.helper_devices.split(","):
        assert preset(device).memory_mib < _served(config) * body_mib
