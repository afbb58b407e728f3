"""Global sampling end to end in Flower's simulation engine: synchronous steps."""

import pytest
from quickstart.task import TASK

from flsplit.config import sync_settings
from flsplit.protocol import TEST_ACC
from flsplit.simulation import simulate
from tests.e2e.small_run import assert_loss_falls, run_small


def test_uniform_sampling_runs_synchronous_steps_of_the_global_batch():
    _, result, strategy = run_small({
        "sampler": "uniform",
        "global-batch-size": 24,
        "round-timeout": 180.0,
        "client-idle-timeout": 60.0,
    })
    assert len(strategy.clients) == 3
    pooled = sum(strategy.nodes[c].examples for c in strategy.clients)
    for rnd in (1, 2):
        (steps,) = strategy.sync_steps[rnd].values()  # one helper: its step sizes
        schedule = strategy.schedules[rnd]
        assert steps == schedule.sum(axis=1).tolist()
        assert all(n == 24 for n in steps[:-1]) and 0 < steps[-1] <= 24
        assert sum(steps) == pooled  # one epoch: every sample exactly once
        assert len(steps) == -(-pooled // 24)
    assert_loss_falls(result)
    server = result.evaluate_metrics_serverapp
    assert server[2][TEST_ACC] > server[0][TEST_ACC]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sampler", "global", "sampler='global' is not one of local, uniform, dirichlet"),
        ("global-batch-size", -4, "global-batch-size=-4 must be an integer >= 0"),
        ("sampler-concentration", 0, "sampler-concentration=0 must be a number > 0"),
        ("sampler-straggler-weight", "x", "sampler-straggler-weight='x' must be a number"),
        ("sync-steps", 2.5, "sync-steps=2.5 must be an integer"),
        ("client-parts", "all", "client-parts='all' is not one of shared, local"),
    ],
)
def test_bad_sampling_settings_name_the_value_and_the_fix(key, value, message):
    with pytest.raises(ValueError, match="run config") as info:
        sync_settings({key: value})
    assert message in str(info.value) and "--run-config" in str(info.value)


def test_local_sampler_keeps_local_batches():
    settings = sync_settings({"sampler": "local", "batch-size": 8})
    assert not settings.sync and settings.sampler == "fixed-local"
    settings = sync_settings({"sampler": "dirichlet", "batch-size": 8})
    assert settings.sync and settings.global_batch_size == 8


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"mode": "fedavg"}, r"sampler='uniform' needs mode='split'"),
        (
            {"planner": "auto", "cut-candidates": "conv1,fc2;conv2,fc2"},
            r"sampler='uniform' with cut-candidates: a helper runs one body",
        ),
        ({"chain-length": 2, "num-helpers": 2}, r"chain-length=2: synchronous steps run on one"),
    ],
)
def test_global_sampling_refuses_modes_it_cannot_run_before_the_engine_starts(config, match):
    with pytest.raises(ValueError, match=match):
        simulate(TASK, {"sampler": "uniform", "num-clients": 2, **config})
