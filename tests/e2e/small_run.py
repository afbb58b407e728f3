"""The small simulated run that the end-to-end tests start from, and its shared checks."""

from quickstart.task import TASK

from flsplit.protocol import TEST_LOSS, TRAIN_LOSS
from flsplit.simulation import simulate

#: Two rounds of the quickstart task: three clients, one helper, cut after conv2 and fc2.
SMALL_RUN = {
    "num-server-rounds": 2,
    "num-helpers": 1,
    "num-clients": 3,
    "cuts": "conv2,fc2",
    "lr": 0.05,
    "momentum": 0.9,
    "round-timeout": 120.0,
}


def run_small(overrides: dict | None = None) -> tuple:
    """Simulate :data:`SMALL_RUN` with ``overrides``; return (initial arrays, result,
    strategy) of the finished ServerApp."""
    runs = []
    simulate(TASK, {**SMALL_RUN, **(overrides or {})}, on_result=lambda *run: runs.append(run))
    assert len(runs) == 1, "the ServerApp did not finish"
    return runs[0]


def assert_loss_falls(result) -> None:
    """Training loss falls from round 1 to 2 and the server's test loss below the
    initial model's."""
    train = result.train_metrics_clientapp
    assert set(train) == {1, 2}
    assert train[2][TRAIN_LOSS] < train[1][TRAIN_LOSS]
    server = result.evaluate_metrics_serverapp
    assert server[2][TEST_LOSS] < server[0][TEST_LOSS]
