"""Every round planned from measurements: failures planned out, slow nodes avoided."""

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation
from quickstart.task import TASK

from flsplit.client.app import enable_split_learning
from flsplit.protocol import CONFIG, HELPER_TRAIN, ROLE_HELPER, SERVER_ROUND
from flsplit.server.app import make_server_app
from flsplit.simulation import backend_config_for

BASE = {
    "num-helpers": 2,
    "cuts": "conv2,fc2",
    "planner": "auto",
    "planner-time-limit": 0.5,
    "emulate": True,
    "client-devices": "jetson-gpu",
    "helper-devices": "vm",
    "link-mbps": 1000,
    "torch-threads": 1,
    "call-deadline": 15.0,
    "round-timeout": 60.0,
    "lr": 0.05,
}


def _run(config, client_app, num_supernodes):
    runs = []
    server = make_server_app(TASK, config, on_result=lambda *run: runs.append(run))
    run_simulation(
        server, client_app, num_supernodes, backend_config=backend_config_for(num_supernodes)
    )
    assert runs, "the ServerApp did not finish"
    return runs[0]


def test_a_slowed_helper_gets_less_work_in_the_next_round():
    # 200x its own CPU time: the slowdown must dwarf what a loaded machine adds to the
    # other helper's wall-clock task times (at 40x, a fast helper queueing four clients
    # under load measured slower than the slowed one with one client, and kept it)
    config = {**BASE, "num-server-rounds": 3, "slowdown": "helper:0:200:2"}
    app = enable_split_learning(ClientApp(), TASK, config)
    _, result, strategy = _run(config, app, 6)
    slow = next(
        n
        for n, info in strategy.nodes.items()
        if info.role == ROLE_HELPER and info.index == 0
    )
    served = [
        sum(1 for h in entry["plan"]["assignment"].values() if h == f"h{slow}")
        for entry in strategy.history
    ]
    assert len(served) == 3
    # rounds 1 and 2 are planned before the slowdown is seen; round 3 moves work away
    assert served[2] < served[1]
    assert set(result.train_metrics_clientapp) == {1, 2, 3}


def _failing_helper_mod(msg, context, call_next):
    if (
        msg.metadata.message_type == HELPER_TRAIN
        and int(context.node_config["partition-id"]) == 0
        and int(msg.content[CONFIG][SERVER_ROUND]) == 1
    ):
        raise RuntimeError("helper 0 lost its power supply")
    return call_next(msg, context)


def test_a_vanished_helper_is_planned_out_without_an_exception():
    config = {**BASE, "num-server-rounds": 2}
    app = enable_split_learning(ClientApp(mods=[_failing_helper_mod]), TASK, config)
    _, result, strategy = _run(config, app, 5)
    assert len(strategy.history) == 2
    lost = [n for n, info in strategy.nodes.items() if info.role == "helper"]
    assert len(lost) == 1  # the failed helper left the plan
    second = strategy.history[1]["plan"]["assignment"]
    assert set(second.values()) == {f"h{lost[0]}"}
    assert len(second) == 3
    assert 2 in result.train_metrics_clientapp
    # round-1.json names the helper by its own id, with its error, and its clients
    failures = strategy.history[0]["failures"]
    dead = [f for f in failures if f["role"] == "helper"]
    assert len(dead) == 1 and dead[0]["node"] not in strategy.nodes
    assert dead[0]["cause"] == "helper 0 lost its power supply (error code 2)"
    # its clients failed too (each with its own error: it could not reach the helper)
    first = strategy.history[0]["plan"]["assignment"]
    orphans = sum(1 for h in first.values() if h == f"h{dead[0]['node']}")
    assert orphans == len([f for f in failures if f["role"] == "client"]) > 0
