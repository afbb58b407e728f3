"""The noniid example's data and the sampling comparison's run configs (no simulation)."""

import sys

import numpy as np
import pytest

from benchmarks.sampling_compare import run_config, steps_per_round, straggler_slowdown
from flsplit.launch import read_app_config
from flsplit.model.data import digits
from tests.paths import ROOT

APP = ROOT / "examples" / "noniid"


@pytest.fixture(scope="module")
def task():
    sys.path.insert(0, str(APP))
    try:
        from noniid.task import TASK

        yield TASK
    finally:
        sys.path.remove(str(APP))


def test_every_client_holds_two_classes_and_the_pool_is_used_once(task):
    config = task.config(read_app_config(APP))
    _, labels = digits()
    seen = []
    for pid in range(20):
        train, val = task.load_data(pid, 20, config)
        y = np.concatenate([train.dataset.tensors[1].numpy(), val.dataset.tensors[1].numpy()])
        assert len(set(y.tolist())) == 2, pid
        seen.append(len(y))
    assert sum(seen) == len(labels) - len(task.load_test_data(config).dataset)


def test_global_sampling_runs_get_the_local_runs_step_count(task):
    config = task.config(read_app_config(APP))
    steps = steps_per_round(task, config)
    largest = max(len(task.load_data(p, 20, config)[0].dataset) for p in range(20))
    assert steps == -(-largest // int(config["batch-size"]))
    slow = straggler_slowdown(20, 0.25, 4)
    assert slow.split(";") == [f"client:{i}:4:0" for i in (0, 4, 8, 12, 16)]
    local = run_config(config, "local", steps, slow)
    assert local["sampler"] == "local" and local["slowdown"] == ""
    uniform = run_config(config, "uniform+stragglers", steps, slow)
    assert uniform["sync-steps"] == steps and uniform["slowdown"] == slow
    with pytest.raises(ValueError, match="must be in"):
        straggler_slowdown(20, 0, 4)
