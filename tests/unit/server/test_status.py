"""The run's ``status.json``: what the ServerApp writes at the start, after every round and
at the end (completed, or failed with the error), and ``flsplit status`` reading it."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import FedAvg
from quickstart.task import TASK

from flsplit.cli import main as flsplit_main
from flsplit.protocol import ROLE_CLIENT, ROLE_HELPER
from flsplit.server.app import make_server_app
from flsplit.server.modes import mode_split
from flsplit.server.status import (
    COMPLETED,
    FAILED,
    RUNNING,
    STATUS_FILE,
    RunStatus,
    describe,
    exit_code,
    read_status,
)
from strategies import SplitStrategy
from tests.unit.strategies.conftest import _server_identity  # noqa: F401 (autouse fixture)
from tests.unit.strategies.fake_grid import FakeGrid, FakeNode

HELPER, CLIENTS = 11, (21, 22)


def _status(tmp_path):
    return json.loads((tmp_path / STATUS_FILE).read_text())


def test_without_an_output_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = RunStatus(None)
    status.round_ended(1, {"clients": [1]})
    status.completed()
    assert list(tmp_path.iterdir()) == []


def test_the_file_follows_the_run_and_is_replaced_whole(tmp_path):
    status = RunStatus(tmp_path, run_id=5)
    assert _status(tmp_path)["state"] == RUNNING
    status.started(0, 3)
    status.round_ended(1, {"clients": [21, 22], "completed": [21, 22]})
    seen = _status(tmp_path)
    assert (seen["state"], seen["round"], seen["num-rounds"], seen["run-id"]) == (
        RUNNING, 1, 3, 5
    )
    assert seen["rounds"]["1"]["completed"] == [21, 22]
    status.completed()
    assert _status(tmp_path)["state"] == COMPLETED
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]  # no temporary file left


def test_a_failure_keeps_the_error_text_and_the_last_round(tmp_path):
    status = RunStatus(tmp_path)
    status.started(0, 4)
    status.round_ended(2)
    status.failed(RuntimeError("3 client nodes answered discovery"))
    seen = _status(tmp_path)
    assert (seen["state"], seen["round"]) == (FAILED, 2)
    assert seen["error"] == "RuntimeError: 3 client nodes answered discovery"
    assert describe(seen).startswith("failed after round 2 of 4")
    assert exit_code(seen) == 1


def test_a_resumed_run_keeps_the_round_records_before_it(tmp_path):
    first = RunStatus(tmp_path)
    first.started(0, 4)
    for rnd in (1, 2, 3):
        first.round_ended(rnd, {"clients": [rnd]})
    # killed in round 3 (after its record), resumed from the checkpoint of round 2
    second = RunStatus(tmp_path)
    second.started(2, 4)
    second.round_ended(3, {"clients": [33]})
    assert _status(tmp_path)["rounds"] == {"1": {"clients": [1]}, "2": {"clients": [2]},
                                           "3": {"clients": [33]}}


def test_flsplit_status_exits_zero_only_for_a_completed_run(tmp_path, capsys):
    assert flsplit_main(["status", str(tmp_path)]) == 2
    status = RunStatus(tmp_path, run_id=9)
    status.started(0, 2)
    assert flsplit_main(["status", str(tmp_path)]) == 3
    assert "running, round 0 of 2 done (run 9" in capsys.readouterr().out
    status.round_ended(1, {"aggregated": False})
    status.round_ended(2, {"aggregated": True})
    status.completed()
    assert flsplit_main(["status", str(tmp_path / STATUS_FILE)]) == 0
    assert "completed, round 2 of 2" in capsys.readouterr().out
    assert "rounds not aggregated: 1" in describe(read_status(tmp_path))


# -- the ServerApp writes it -----------------------------------------------------------


class FailingFedAvg(FedAvg):
    """FedAvg whose aggregation raises in round ``fail_in``."""

    def __init__(self, fail_in: int) -> None:
        super().__init__(min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0)
        self.fail_in = fail_in

    def aggregate_train(self, server_round, replies):
        if server_round == self.fail_in:
            raise ValueError(f"aggregation broke in round {server_round}")
        return super().aggregate_train(server_round, replies)


def _run_server_app(tmp_path, fail_in: int = 0, **config):
    run_config = {
        "num-server-rounds": 3, "num-helpers": 1, "num-clients": len(CLIENTS),
        "output-dir": str(tmp_path), "fraction-evaluate": 0.0, **config,
    }  # fmt: skip
    settings = TASK.settings(None, run_config)
    model = TASK.model_fn(settings.as_dict())
    keys = SplitStrategy.from_split(
        mode_split(TASK, settings), model, TASK.example_input(settings.as_dict())
    )
    nodes = {HELPER: FakeNode(ROLE_HELPER)}
    nodes.update({c: FakeNode(ROLE_CLIENT, examples=10, fill=0.01 * c) for c in CLIENTS})
    grid = FakeGrid(nodes, keys.piece_keys)
    app = make_server_app(TASK, strategy_fn=lambda _config: FailingFedAvg(fail_in))
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)
    app(grid, context)


def test_the_server_app_reports_every_round_and_completion(tmp_path):
    _run_server_app(tmp_path)
    seen = _status(tmp_path)
    assert (seen["state"], seen["round"], seen["num-rounds"], seen["error"]) == (
        COMPLETED, 3, 3, None
    )
    assert sorted(seen["rounds"]) == ["1", "2", "3"]
    for record in seen["rounds"].values():
        assert record["completed"] == list(CLIENTS) and record["failed"] == []
        assert record["aggregated"] is True
        assert record["helper-of"] == {str(c): HELPER for c in CLIENTS}
        assert record["wall-s"] >= 0


def test_the_server_app_reports_a_failure_with_its_error_and_raises(tmp_path):
    with pytest.raises(ValueError, match="aggregation broke in round 2"):
        _run_server_app(tmp_path, fail_in=2)
    seen = _status(tmp_path)
    assert (seen["state"], seen["round"]) == (FAILED, 1)
    assert seen["error"] == "ValueError: aggregation broke in round 2"
    assert sorted(seen["rounds"]) == ["1"]


def test_a_run_config_the_server_app_refuses_is_reported_too(tmp_path):
    run_config = {"num-server-rounds": 0, "output-dir": str(tmp_path)}
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)
    with pytest.raises(ValueError, match="num-server-rounds"):
        make_server_app(TASK)(FakeGrid({}, lambda _cuts: []), context)
    seen = _status(tmp_path)
    assert seen["state"] == FAILED and "num-server-rounds" in seen["error"]
