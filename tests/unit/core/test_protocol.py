"""The round protocol: every message's content reads back as it was written, and a
malformed one is refused with the key it lacks."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from flsplit import protocol
from flsplit.config import DEFAULT_RUN_CONFIG
from flsplit.plan.sampling.samplers import UniformGlobalSampler
from flsplit.protocol import (
    SCHEDULE_COUNTS,
    SCHEDULE_SHAPE,
    ClientResult,
    ClientRound,
    HelperResult,
    HelperRound,
    HelperTask,
    NodeReport,
    ProtocolError,
    ServedClient,
    TaskSpan,
    pack_schedule,
    unpack_schedule,
)


def test_message_types_are_flowers_kind_dot_action():
    assert protocol.QUERY.startswith("query.")
    assert f"train.{protocol.SPLIT_ACTION}" == protocol.CLIENT_TRAIN
    assert f"train.{protocol.HELPER_ACTION}" == protocol.HELPER_TRAIN


def test_node_report_round_trip_and_role_check():
    report = NodeReport(role=protocol.ROLE_HELPER, index=2, address="10.0.0.5:9800",
                        listen_address="0.0.0.0:9800", compute_factor=3.5, memory_mib=4096.0,
                        simulation_concurrency=6)
    assert NodeReport.from_content(report.to_content()) == report
    client = NodeReport(role=protocol.ROLE_CLIENT, examples=120)
    assert NodeReport.from_content(client.to_content()).examples == 120
    bad = client.to_content()
    bad.config_records[protocol.INFO]["role"] = "server"
    with pytest.raises(ProtocolError, match="role 'server'"):
        NodeReport.from_content(bad)


def test_helper_order_items_round_trip_and_bad_items_are_refused():
    tasks = [HelperTask("17", protocol.FORWARD), HelperTask("4", protocol.BACKWARD)]
    assert [HelperTask.decode(t.encode()) for t in tasks] == tasks
    with pytest.raises(ProtocolError, match="not 'client:kind'"):
        HelperTask.decode("17")
    with pytest.raises(ProtocolError, match="task kind 'sideways'"):
        HelperTask.decode("17:sideways")


def test_helper_round_round_trip_keeps_the_run_config_under_it():
    served = [ServedClient("3", "conv2,fc1", 1, "127.0.0.1:5001", "tok-3-next"),
              ServedClient("4", "fc1,fc2", 2)]
    schedule = np.array([[1, 0], [2, 3]], dtype=np.int64)
    round_ = HelperRound(5, served, b"key", "127.0.0.1:5000", 60.0,
                         [HelperTask("3", protocol.FORWARD)], schedule, "local")
    config = round_.to_config({"lr": 0.1, "batch-size": 8})
    assert config["lr"] == 0.1 and config["batch-size"] == 8
    back = HelperRound.from_config(config)
    assert back.clients == served and back.order == round_.order
    assert back.token_key == b"key" and back.server_round == 5 and back.client_parts == "local"
    np.testing.assert_array_equal(back.schedule, schedule)
    for key in set(config) - {"lr", "batch-size"}:  # every key the round wrote is needed
        if key.startswith("schedule"):
            continue  # a schedule is optional (global sampling only)
        incomplete = {k: v for k, v in config.items() if k != key}
        with pytest.raises(ProtocolError, match=repr(key)):
            HelperRound.from_config(incomplete)


def test_client_round_round_trip_with_and_without_emulated_link():
    plain = ClientRound("conv2,fc1", "127.0.0.1:5000", "tok")
    # the run config's own link settings (a mix) pass through without being the link
    config = plain.to_config({**DEFAULT_RUN_CONFIG, "lr": 0.2})
    assert config["lr"] == 0.2
    assert ClientRound.from_config(config) == plain
    linked = ClientRound("conv2,fc1", "h:1", "tok", link_mbps=30.0, link_latency_ms=5.0,
                         schedule=np.array([[3], [0]], dtype=np.int64), sample_offset=7)
    back = ClientRound.from_config(linked.to_config({}))
    assert (back.link_mbps, back.link_latency_ms, back.sample_offset) == (30.0, 5.0, 7)
    np.testing.assert_array_equal(back.schedule, linked.schedule)


def test_a_client_schedule_must_be_one_column():
    config = ClientRound("a,b", "h:1", "t", schedule=np.ones((2, 2), dtype=np.int64)).to_config({})
    with pytest.raises(ProtocolError, match="not one column"):
        ClientRound.from_config(config)


def test_schedule_codec_checks_what_it_reads():
    counts = np.arange(6, dtype=np.int64).reshape(3, 2)
    np.testing.assert_array_equal(protocol.unpack_schedule(protocol.pack_schedule(counts)), counts)
    packed = protocol.pack_schedule(counts)
    packed[protocol.SCHEDULE_COUNTS] = packed[protocol.SCHEDULE_COUNTS][:-1]
    with pytest.raises(ValueError, match="must hold 6"):
        protocol.unpack_schedule(packed)
    with pytest.raises(ValueError, match="non-negative"):
        protocol.pack_schedule(-counts)


def test_client_result_is_flower_metrics_plus_stage_times():
    result = ClientResult(64, 0.5, 0.75, 2, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0)
    metrics = result.to_metrics()
    assert metrics[protocol.NUM_EXAMPLES] == 64 and metrics[protocol.TRAIN_LOSS] == 0.5
    assert ClientResult.from_metrics(metrics) == result
    assert ClientResult.from_metrics(protocol.train_metrics(64, 0.5, 0.75)) is None


def test_client_result_carries_the_load_time_to_the_planner_not_to_the_app():
    result = ClientResult(64, 0.5, 0.75, 2, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0, load_ms=600.0)
    metrics = result.to_metrics()
    load_key = ClientResult._KEYS["load_ms"]  # the wire name lives in the protocol module
    assert metrics[load_key] == 600.0
    assert ClientResult.from_metrics(metrics) == result
    assert load_key not in ClientResult.app_metrics(metrics)
    # a client that does not report it (an older flsplit) loads for free
    older = {k: v for k, v in metrics.items() if k != load_key}
    assert ClientResult.from_metrics(older).load_ms == 0.0


def test_helper_result_round_trip_with_bodies():
    result = HelperResult(["3"], ["4"], 1.5, 2.0, 1, 2, 300.0, 4.0, 5.0,
                          [TaskSpan("3", protocol.FORWARD, 0.0, 0.1)], [8, 8], [2, 1],
                          {"4": "no request for 120 s"},
                          aborted={"6": "ValueError: bad batch", "5": "its connection closed"})
    body = ArrayRecord([np.zeros(2, dtype=np.float32)])
    content = result.to_content({"3": body})
    assert HelperResult.from_content(content) == result
    assert set(protocol.bodies_of(content)) == {3}
    assert protocol.body_owner(protocol.body_record(3)) == 3
    assert protocol.body_owner(protocol.METRICS) is None


def test_a_reply_without_metrics_is_refused():
    with pytest.raises(ProtocolError, match="'metrics'"):
        HelperResult.from_content(RecordDict({protocol.CONFIG: ConfigRecord({})}))
    with pytest.raises(ProtocolError, match="'info'"):
        NodeReport.from_content(RecordDict({protocol.METRICS: MetricRecord({})}))


def test_schedule_round_trips_through_config_lists() -> None:
    sizes = [70, 30, 200, 5, 0, 113, 41]  # as in tests/unit/plan/test_sampling.py
    counts = UniformGlobalSampler(sizes, 16, seed=2).epoch(0)
    record = pack_schedule(counts)
    assert all(isinstance(v, int) for v in record[SCHEDULE_COUNTS])
    assert np.array_equal(unpack_schedule(record), counts)
    with pytest.raises(ValueError, match=SCHEDULE_COUNTS):
        unpack_schedule({SCHEDULE_SHAPE: [2, 2], SCHEDULE_COUNTS: [1, 2, 3]})
    with pytest.raises(ValueError, match=SCHEDULE_SHAPE):
        unpack_schedule({SCHEDULE_COUNTS: [1]})
    with pytest.raises(ValueError, match="counts"):
        pack_schedule(np.array([[-1, 2]]))
