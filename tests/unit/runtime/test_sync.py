"""Synchronous steps over the real gRPC data plane equal centralised steps."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn

from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret
from flsplit.runtime.helper_client import DataPlaneError, HelperClient
from flsplit.runtime.sync_client import SampleStream, train_sync
from flsplit.runtime.sync_helper import SyncWorker
from flsplit.runtime.sync_server import SyncHelperServer
from flsplit.runtime.worker import TensorSpec

CUTS = ("conv2", "fc2")  # head conv1; body conv2 .. fc1 with BatchNorm; tail fc2
RUN, ROUND, HELPER = 3, 1, 77
KEY = helper_key(new_run_secret(), RUN, HELPER)
TOL = 1e-6


def _data(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64),
            torch.randint(0, 10, (n,), generator=gen),
        )
        for n in sizes
    ]


def _model():
    torch.manual_seed(0)
    return SmallCNN(1, 8).double().train()


def _sgd(momentum):
    return lambda params: torch.optim.SGD(params, lr=0.1, momentum=momentum)


def _serve(body, counts, client_parts, momentum, idle_timeout=None):
    clients = [str(k) for k in range(counts.shape[1])]
    worker = SyncWorker(
        body,
        clients,
        counts,
        _sgd(momentum),
        input_spec=TensorSpec((16, 8, 8), torch.float64),
        client_parts=client_parts,
    )
    verifier = TokenVerifier(KEY, RUN, ROUND, HELPER, clients)
    server = SyncHelperServer(
        worker, verifier, address="127.0.0.1:0", task_timeout=30, idle_timeout=idle_timeout
    )
    return worker, verifier, server.start()


def _round(split, datas, counts, client_parts, momentum, skip=()):
    """Run one round with a thread per client; return each client's (head, tail, result)."""
    worker, verifier, server = _serve(split.body, counts, client_parts, momentum)
    outcome: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def client(k):
        head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
        opt = _sgd(momentum)([*head.parameters(), *tail.parameters()])
        try:
            with HelperClient(server.address, str(k), verifier.token_for(str(k)), 30) as helper:
                result = train_sync(
                    head,
                    tail,
                    helper,
                    datas[k],
                    counts[:, k],
                    nn.functional.cross_entropy,
                    opt,
                    client_parts=client_parts,
                    seed=k,
                )
            outcome[k] = (head, tail, result)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(datas))]
    for t in threads:
        t.start()
    try:
        assert server.wait_clients(60), "the round did not finish"
    finally:
        for t in threads:
            t.join(30)
        server.stop()
    assert not errors, errors
    return worker, outcome


def _reference(model, datas, counts, momentum):
    """The unsplit model stepped on the concatenated global batch of every step."""
    streams = [SampleStream(len(d[1]), k) for k, d in enumerate(datas)]
    opt = _sgd(momentum)(model.parameters())
    for row in counts:
        xs, ys = [], []
        for k, n in enumerate(row):
            if n:
                index = torch.from_numpy(streams[k].take(int(n)))
                xs.append(datas[k][0][index])
                ys.append(datas[k][1][index])
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
    return model.state_dict()


def _max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def test_shared_client_parts_equal_centralised_steps_over_grpc():
    """Several steps with momentum: zero counts, a step of one client, a client's second
    pass over its data; all head/tail copies and the body equal the centralised model."""
    model = _model()
    split = split_model(copy.deepcopy(model), CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    datas = _data([5, 6, 4])
    counts = np.array([[2, 0, 3], [1, 2, 2], [0, 4, 1], [3, 0, 0], [2, 1, 0]])
    worker, outcome = _round(split, datas, counts, "shared", momentum=0.9)
    reference = _reference(model, datas, counts, 0.9)

    assert worker.step_examples == [5, 5, 5, 3, 3]
    assert worker.step_clients == [2, 3, 2, 1, 2]
    for name, value in split.body.state_dict().items():  # weights and BatchNorm buffers
        assert _max_diff(value, reference[name]) <= TOL, name
    for k, (head, tail, result) in outcome.items():
        assert result.examples == int(counts[:, k].sum())
        assert result.batches == int((counts[:, k] > 0).sum())
        for name, value in {**head.state_dict(), **tail.state_dict()}.items():
            assert _max_diff(value, reference[name]) <= TOL, (k, name)
    initial = _model().state_dict()
    assert _max_diff(reference["conv1.weight"], initial["conv1.weight"]) > 1e-3


def test_local_client_parts_step_skips_a_zero_count_client_and_averages_to_centralised():
    model = _model()
    split = split_model(copy.deepcopy(model), CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    datas = _data([4, 4, 6])
    counts = np.array([[2, 0, 3]])
    before = copy.deepcopy(split.head.state_dict())
    worker, outcome = _round(split, datas, counts, "local", momentum=0.0)
    reference = _reference(model, datas, counts, 0.0)

    assert worker.step_examples == [5] and worker.step_clients == [2]
    assert [r.client for r in worker.executed] == ["step0", "step0"]
    assert worker.bodies["1"].batches == 0 and worker.bodies["0"].examples == 2
    head1, _, result1 = outcome[1]
    assert result1.examples == 0 and result1.batches == 0  # sat the step out
    for name, value in head1.state_dict().items():
        assert torch.equal(value, before[name]), name
    for name, value in split.body.state_dict().items():
        assert _max_diff(value, reference[name]) <= TOL, name
    weights = {0: 2 / 5, 2: 3 / 5}  # FedAvg over the participants, by examples
    for name in [*split.head.state_dict(), *split.tail.state_dict()]:
        average = sum(
            w * {**outcome[k][0].state_dict(), **outcome[k][1].state_dict()}[name]
            for k, w in weights.items()
        )
        assert _max_diff(average, reference[name]) <= TOL, name


def test_a_client_dying_mid_step_is_dropped_and_the_others_finish():
    model = _model()
    split = split_model(model, CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    datas = _data([6, 6, 6])
    counts = np.array([[2, 2, 2], [2, 2, 2], [2, 2, 2]])
    worker, verifier, server = _serve(split.body, counts, "shared", 0.0, idle_timeout=1.0)
    done: dict[int, object] = {}

    def client(k):
        head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
        opt = _sgd(0.0)([*head.parameters(), *tail.parameters()])
        with HelperClient(server.address, str(k), verifier.token_for(str(k)), 30) as helper:
            done[k] = train_sync(
                head, tail, helper, datas[k], counts[:, k], nn.functional.cross_entropy, opt,
                seed=k,
            )

    silent = threading.Event()

    def dying():  # sends the forward of step 0, then falls silent (connection open: hung)
        head = copy.deepcopy(split.head)
        with HelperClient(server.address, "2", verifier.token_for("2"), 30) as helper:
            helper.sync(0)
            helper.forward(head(datas[2][0][:2]).detach(), step=0)
            silent.wait(60)

    threads = [threading.Thread(target=client, args=(k,)) for k in (0, 1)]
    threads.append(threading.Thread(target=dying))
    for t in threads:
        t.start()
    try:
        assert server.wait_clients(30)
    finally:
        silent.set()
        for t in threads:
            t.join(30)
        server.stop()
    # dropped by the idle timeout (1 s), not left to block the barrier until the clients'
    # 30 s deadlines
    assert server.dropped["2"] == "no request for 1 s"
    assert set(server.dropped) == {"2"} and set(server.finished) == {"0", "1"}
    assert set(done) == {0, 1} and all(r.batches == 3 for r in done.values())
    assert worker.step_clients == [3, 2, 2]  # step 0 ran the body on 3, the rest on 2


def test_a_client_failing_mid_step_aborts_and_the_others_go_on_without_waiting():
    """Its Abort drops it from the barriers at once (an idle timeout of an hour is never
    reached)."""
    model = _model()
    split = split_model(model, CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    datas = _data([6, 6, 6])
    counts = np.array([[2, 2, 2], [2, 2, 2], [2, 2, 2]])
    _, verifier, server = _serve(split.body, counts, "shared", 0.0, idle_timeout=3600)
    done: dict[int, object] = {}
    failed: list[BaseException] = []

    def client(k):
        head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
        opt = _sgd(0.0)([*head.parameters(), *tail.parameters()])
        with HelperClient(server.address, str(k), verifier.token_for(str(k)), 30) as helper:
            done[k] = train_sync(
                head, tail, helper, datas[k], counts[:, k], nn.functional.cross_entropy, opt,
                seed=k,
            )

    def failing():  # its loss code fails after the forward of step 0
        head = copy.deepcopy(split.head)
        try:
            with HelperClient(server.address, "2", verifier.token_for("2"), 30) as helper:
                helper.sync(0)
                helper.forward(head(datas[2][0][:2]).detach(), step=0)
                raise ArithmeticError("loss overflow")
        except ArithmeticError as err:
            failed.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in (0, 1)]
    threads.append(threading.Thread(target=failing))
    for t in threads:
        t.start()
    try:
        assert server.wait_clients(60)
    finally:
        for t in threads:
            t.join(30)
        server.stop()
    assert server.aborted == {"2": "ArithmeticError: loss overflow"} and len(failed) == 1
    assert not server.dropped and set(server.finished) == {"0", "1"}
    assert set(done) == {0, 1} and all(r.batches == 3 for r in done.values())


def test_a_forward_with_the_wrong_number_of_rows_is_refused():
    split = split_model(_model(), CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    counts = np.array([[2, 3]])
    _, verifier, server = _serve(split.body, counts, "local", 0.0)
    try:
        with HelperClient(server.address, "0", verifier.token_for("0"), 10) as helper:
            with pytest.raises(DataPlaneError, match=r"INVALID_ARGUMENT.*schedules 2 samples"):
                helper.forward(torch.zeros(3, 16, 8, 8, dtype=torch.float64), step=0)
            with pytest.raises(DataPlaneError, match=r"FAILED_PRECONDITION.*not in this round"):
                helper.forward(torch.zeros(2, 16, 8, 8, dtype=torch.float64), step=1)
    finally:
        server.stop()


def test_sample_stream_draws_each_sample_once_per_pass_and_resumes_at_an_offset():
    stream = SampleStream(5, seed=3)
    first = stream.take(5)
    assert sorted(first.tolist()) == [0, 1, 2, 3, 4]
    more = stream.take(7)
    assert sorted(more[:5].tolist()) == [0, 1, 2, 3, 4]
    resumed = SampleStream(5, seed=3, offset=8).take(4)
    assert resumed.tolist() == more[3:7].tolist()
