"""End to end in Flower's simulation engine (Ray backend)."""

import pytest
import torch
from quickstart.task import TASK

from flsplit.protocol import TEST_ACC, TRAIN_LOSS
from flsplit.simulation import backend_config_for, check_concurrency, simulate
from tests.e2e.small_run import assert_loss_falls, run_small


def test_three_clients_one_helper_two_rounds_train_every_layer():
    initial, result, strategy = run_small()
    assert len(strategy.helpers) == 1 and len(strategy.clients) == 3

    before = initial.to_torch_state_dict()
    after = result.arrays.to_torch_state_dict()
    parts = {
        "head": strategy.head_keys,
        "body": strategy.body_keys,
        "tail": strategy.tail_keys,
    }
    for part, keys in parts.items():
        weights = [k for k in keys if k.endswith("weight")]
        assert weights, part
        for key in weights:
            assert not torch.allclose(before[key], after[key]), f"{part} {key} did not change"
    assert not torch.equal(before["bn2.running_mean"], after["bn2.running_mean"])

    assert_loss_falls(result)
    server = result.evaluate_metrics_serverapp
    assert server[2][TEST_ACC] > server[0][TEST_ACC]


def test_configurations_that_would_deadlock_are_refused():
    one_worker = {"init_args": {"num_cpus": 2}, "client_resources": {"num_cpus": 2}}
    with pytest.raises(ValueError, match="2 helpers plus at least one client"):
        check_concurrency(2, one_worker)
    check_concurrency(2, backend_config_for(12, cpus=2))
    with pytest.raises(ValueError, match="leaves no client"):
        simulate(TASK, {"num-helpers": 2}, num_supernodes=2)


def test_a_backend_too_small_for_the_helpers_fails_fast_with_a_clear_message():
    """Bypass flsplit's own check: the strategy must still refuse at discovery."""
    from flwr.simulation import run_simulation

    from flsplit.client.app import make_client_app
    from flsplit.server.app import make_server_app

    config = TASK.config({"num-helpers": 2, "num-server-rounds": 1})
    finished = []
    with pytest.raises(RuntimeError, match=r"2 helpers \(each busy for the whole round\)"):
        run_simulation(
            server_app=make_server_app(TASK, config, on_result=lambda *a: finished.append(a)),
            client_app=make_client_app(TASK, config),
            num_supernodes=4,
            backend_config={"init_args": {"num_cpus": 2}, "client_resources": {"num_cpus": 1}},
        )
    assert not finished


def test_a_simulation_with_only_helpers_names_num_helpers():
    """flwr run with num-supernodes <= num-helpers: the refusal says no node is a client."""
    from flwr.simulation import run_simulation

    from flsplit.client.app import make_client_app
    from flsplit.server.app import make_server_app

    config = TASK.config({"num-helpers": 2, "num-server-rounds": 1})
    with pytest.raises(RuntimeError, match="num-helpers=2 leaves no node to be a client"):
        run_simulation(
            server_app=make_server_app(TASK, config),
            client_app=make_client_app(TASK, config),
            num_supernodes=2,
            backend_config={"init_args": {"num_cpus": 2}, "client_resources": {"num_cpus": 1}},
        )


def test_clients_with_different_cuts_train_in_the_same_round():
    """One helper holds bodies of different depths; every part of the model trains."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from flsplit.client.app import make_client_app
    from strategies import SplitStrategy

    class TwoCuts(SplitStrategy):
        def client_cuts(self, server_round, clients):
            pairs = ("conv2,fc2", "bn2,fc1")
            return {c: pairs[i % 2] for i, c in enumerate(sorted(clients))}

    config = TASK.config({"num-helpers": 1, "lr": 0.05, "momentum": 0.9, "torch-threads": 1})
    runs = []
    server = ServerApp()

    @server.main()
    def main(grid, context):
        model = TASK.model_fn(config)
        strategy = TwoCuts.for_model(model, TASK.example_input(config), cuts="conv2,fc2")
        initial = ArrayRecord(model.state_dict())
        result = strategy.start(
            grid, initial, num_rounds=2, train_config=ConfigRecord({"lr": 0.05, "momentum": 0.9})
        )
        runs.append((initial, result, strategy))

    run_simulation(
        server,
        make_client_app(TASK, config),
        num_supernodes=4,
        backend_config=backend_config_for(4),
    )
    initial, result, strategy = runs[0]
    assert set(strategy.assignment.cuts_of.values()) == {"conv2,fc2", "bn2,fc1"}
    before, after = initial.to_torch_state_dict(), result.arrays.to_torch_state_dict()
    for key in ("conv1.weight", "conv2.weight", "bn2.weight", "fc1.weight", "fc2.weight"):
        assert not torch.allclose(before[key], after[key]), key
    train = result.train_metrics_clientapp
    assert train[2][TRAIN_LOSS] < train[1][TRAIN_LOSS]
