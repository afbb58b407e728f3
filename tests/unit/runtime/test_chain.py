"""Helper chains over the real gRPC data plane: client -> h1 -> h2 (-> h3) -> client.

Chain training (with and without pipelined micro-batches) must equal training the unsplit
model: gradients and updated weights within 1e-6 (float64, no BatchNorm).
"""

import copy
import itertools
import json
import struct
import threading

import pytest
import torch
from torch import nn

from flsplit.model.splitting import split_model
from flsplit.runtime import wire
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import DataPlaneError, HelperClient
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker

SECRET = new_run_secret()
RUN, ROUND = 9, 3


class Deep(nn.Module):
    """Six linear layers, no BatchNorm: a sample's gradient does not depend on the others."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 12)
        self.fc4 = nn.Linear(12, 12)
        self.fc5 = nn.Linear(12, 12)
        self.fc6 = nn.Linear(12, 4)

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = torch.tanh(self.fc3(x))
        x = torch.relu(self.fc4(x))
        x = torch.tanh(self.fc5(x))
        return self.fc6(x)


CUTS = {2: ("fc2", "fc4", "fc6"), 3: ("fc2", "fc3", "fc5", "fc6")}


def _key(helper):
    return helper_key(SECRET, RUN, helper)


def _token(client, helper):
    return sign_token(_key(helper), RUN, ROUND, client, helper)


def _optimizer(params, lr=0.1, momentum=0.9):
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _start_chain(split, clients, optimizer_fn, micro=1, hop_tokens=None):
    """Start one helper per body piece, last first, each relaying to the next."""
    pieces = split.parts[1:-1]
    helpers = [100 + i for i in range(len(pieces))]
    servers = []
    next_address = None
    for index in reversed(range(len(pieces))):
        helper = helpers[index]
        worker = HelperWorker(
            {c: copy.deepcopy(pieces[index]) for c in clients}, optimizer_fn
        )
        next_hops = {}
        if next_address is not None:
            nxt = helpers[index + 1]
            next_hops = {
                c: HelperClient(
                    next_address, c, (hop_tokens or _token)(c, nxt), deadline=30
                )
                for c in clients
            }
        server = HelperServer(
            worker,
            TokenVerifier(_key(helper), RUN, ROUND, helper, clients),
            next_hops=next_hops,
            in_flight=micro + 1,
        ).start()
        servers.insert(0, server)
        next_address = server.address
    return servers, helpers


def _stop(servers):
    for server in servers:
        server.stop()


def _data(seed, batches=2, n=10):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=gen),
        )
        for _ in range(batches)
    ]


def _reference(model, data, optimizer_fn):
    model = copy.deepcopy(model)
    optimizer = optimizer_fn(model.parameters())
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.state_dict()


def _train_client(split, servers, helpers, client, data, optimizer_fn, micro):
    head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
    optimizer = optimizer_fn(itertools.chain(head.parameters(), tail.parameters()))
    with HelperClient(servers[0].address, client, _token(client, helpers[0]), deadline=30) as h:
        result = train_split(
            head, tail, h, data, nn.functional.cross_entropy, optimizer, micro_batches=micro
        )
    trained = {**head.state_dict(), **tail.state_dict()}
    for server in servers:
        trained.update(server.worker.bodies[client].module.state_dict())
    return result, trained


@pytest.mark.parametrize("hops", [2, 3])
@pytest.mark.parametrize("micro", [1, 3])
def test_chain_training_equals_unsplit_training(hops, micro):
    """Two clients train at once through the same chain (each helper holds a piece of
    each); each client's model after two batches (SGD with momentum) equals the unsplit
    model trained on its data. Batches of 10 samples in 3 micro-batches: 4, 4 and 2."""
    torch.manual_seed(hops)
    model = Deep().double()
    split = split_model(model, CUTS[hops], torch.zeros(2, 6, dtype=torch.float64))
    clients = ["1", "2"]
    data = {c: _data(seed=int(c) + 10 * hops) for c in clients}
    servers, helpers = _start_chain(split, clients, _optimizer, micro)
    results, errors = {}, []

    def run(client):
        try:
            results[client] = _train_client(
                split, servers, helpers, client, data[client], _optimizer, micro
            )
        except Exception as err:  # reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=run, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        for server in servers:
            assert server.wait_clients(10), "a helper did not see every client finish"
    finally:
        _stop(servers)
    initial = model.state_dict()
    for client in clients:
        result, trained = results[client]
        assert result.batches == 2 and result.examples == 20
        expected = _reference(model, data[client], _optimizer)
        assert trained.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(trained[key], value, atol=1e-6, rtol=0, msg=key)
            assert not torch.equal(value, initial[key]), f"{key} did not train"
    for server in servers:
        body = server.worker.bodies["1"]
        assert body.batches == 2 and body.accumulated == 0 and not body.inputs
        fwd = [t for t in server.worker.executed if t.kind == "fwd"]
        assert len(fwd) == 2 * 2 * micro  # every micro-batch of both clients ran here


@pytest.mark.parametrize("micro", [1, 4])
def test_chain_gradients_equal_unsplit_gradients(micro):
    """Plain SGD with lr 1: each parameter moves by exactly minus its gradient."""
    torch.manual_seed(0)
    model = Deep().double()
    split = split_model(model, CUTS[3], torch.zeros(2, 6, dtype=torch.float64))
    x, y = _data(seed=5, batches=1, n=9)[0]
    reference = copy.deepcopy(model)
    nn.functional.cross_entropy(reference(x), y).backward()

    def sgd1(params):
        return _optimizer(params, lr=1.0, momentum=0.0)

    servers, helpers = _start_chain(split, ["1"], sgd1, micro)
    try:
        _, trained = _train_client(split, servers, helpers, "1", [(x, y)], sgd1, micro)
    finally:
        _stop(servers)
    before = model.state_dict()
    for name, param in reference.named_parameters():
        grad = before[name] - trained[name]
        torch.testing.assert_close(grad, param.grad, atol=1e-6, rtol=0, msg=name)


def test_a_next_hop_refusing_the_relayed_token_fails_the_call_and_names_it():
    model = Deep().double()
    split = split_model(model, CUTS[2], torch.zeros(2, 6, dtype=torch.float64))

    def wrong(client, helper):  # h1 presents h1's token to h2
        return _token(client, helper - 1)

    servers, helpers = _start_chain(split, ["1"], _optimizer, hop_tokens=wrong)
    try:
        with (
            HelperClient(servers[0].address, "1", _token("1", helpers[0]), deadline=10) as h,
            pytest.raises(DataPlaneError, match=r"next hop.*another helper"),
        ):
            h.forward(torch.zeros(3, 12, dtype=torch.float64))
        assert servers[1].refused_count == 1
    finally:
        _stop(servers)


def test_a_misshapen_gradient_is_refused_by_the_first_hop_before_it_is_relayed():
    model = Deep().double()
    split = split_model(model, CUTS[2], torch.zeros(2, 6, dtype=torch.float64))
    servers, helpers = _start_chain(split, ["1"], _optimizer)
    try:
        with HelperClient(servers[0].address, "1", _token("1", helpers[0]), deadline=10) as h:
            out = h.forward(torch.zeros(3, 12, dtype=torch.float64))
            assert out.shape == (3, 12)
            with pytest.raises(DataPlaneError, match=r"INVALID_ARGUMENT.*tensor shape"):
                h.backward(torch.zeros(3, 5, dtype=torch.float64))
            assert not [t for t in servers[1].worker.executed if t.kind == "bwd"]
            grad = h.backward(torch.ones(3, 12, dtype=torch.float64))  # still in flight
            assert grad.shape == (3, 12)
    finally:
        _stop(servers)


def test_micro_batch_fields_round_trip_and_are_validated():
    frame = wire.Frame("fwd", "7", "tok", 3, torch.zeros(2), micro=2, micros=5)
    back = wire.decode(wire.encode(frame))
    assert (back.micro, back.micros) == (2, 5)
    plain = wire.encode(wire.Frame("fwd", "7", "tok", 3, torch.zeros(2)))
    assert b"micro" not in plain  # whole batches: the header is as before
    assert (wire.decode(plain).micro, wire.decode(plain).micros) == (0, 1)
    bad = ((5, 5, "'micro'"), (-1, 2, "'micro'"), (0, 0, "'micros'"), (0, 10**6, "'micros'"),
           (0, True, "'micros' must be int"), (0.5, 2, "'micro' must be int"))
    for micro, micros, field in bad:
        header = json.dumps(
            {"op": "finish", "client": "7", "token": "", "step": 0, "tensor": None,
             "micro": micro, "micros": micros}
        ).encode()
        raw = wire.MAGIC + struct.pack("<I", len(header)) + header
        with pytest.raises(wire.FrameError, match=field):
            wire.decode(raw)


def test_planned_routes_with_per_client_cuts_and_micro_batches_equal_unsplit_training():
    """A planned round: three clients over three helpers, each with its own route, cuts
    and micro-batch count, as the train.helper message describes them (helpers build
    every client's piece from its cuts on demand); each client's model equals the
    unsplit model trained on its data."""
    from flsplit.client.helper_role import _build_bodies
    from flsplit.config import RunConfig
    from flsplit.protocol import HelperRound, ServedClient
    from flsplit.task import SplitTask

    torch.manual_seed(4)
    model = Deep().double()
    example = torch.zeros(2, 6, dtype=torch.float64)
    task = SplitTask(model_fn=lambda cfg: copy.deepcopy(model),
                     example_input=lambda cfg: example,
                     load_data=lambda pid, n, cfg: [])
    # client -> (route of helpers, cuts, micro-batches); routes follow the helpers' order
    plans = {
        "1": ([100, 101], "fc2,fc3,fc5", 2),
        "2": ([101, 102], "fc2,fc5,fc6", 3),
        "3": ([102], "fc3,fc5", 1),
        "4": ([100, 101, 102], "fc2,fc3,fc4,fc6", 4),
    }
    helpers = [100, 101, 102]
    config = RunConfig.parse({})
    servers = {}
    for helper in reversed(helpers):  # the next hops listen first
        served = [
            ServedClient(c, cuts, route.index(helper) + 1,
                         servers[route[route.index(helper) + 1]].address
                         if route.index(helper) + 1 < len(route) else "",
                         _token(c, route[route.index(helper) + 1])
                         if route.index(helper) + 1 < len(route) else "", micro)
            for c, (route, cuts, micro) in plans.items() if helper in route
        ]
        # through the message's config, as a helper reads it
        round_ = HelperRound.from_config(HelperRound(ROUND, served, b"k", "", 60.0).to_config({}))
        assert [s.micro_batches for s in round_.clients] == [s.micro_batches for s in served]
        bodies, _ = _build_bodies(task, config, example, round_.clients, lambda body: None)
        next_hops = {
            s.client: HelperClient(s.next_address, s.client, s.next_token, deadline=30)
            for s in round_.clients if s.next_address
        }
        servers[helper] = HelperServer(
            HelperWorker(bodies, _optimizer),
            TokenVerifier(_key(helper), RUN, ROUND, helper, [s.client for s in served]),
            next_hops=next_hops,
            in_flight=max(s.micro_batches for s in served) + 1,
        ).start()
    data = {c: _data(seed=40 + int(c)) for c in plans}
    # traced here, not in the threads (tracing is not thread-safe)
    splits = {c: split_model(model, cuts.split(","), example) for c, (_, cuts, _) in plans.items()}
    results, errors = {}, []

    def run(client):
        route, _, micro = plans[client]
        split = splits[client]
        head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
        optimizer = _optimizer(itertools.chain(head.parameters(), tail.parameters()))
        try:
            first = servers[route[0]]
            with HelperClient(first.address, client, _token(client, route[0]), deadline=30) as h:
                train_split(head, tail, h, data[client], nn.functional.cross_entropy,
                            optimizer, micro_batches=micro)
            trained = {**head.state_dict(), **tail.state_dict()}
            for helper in route:
                trained.update(servers[helper].worker.bodies[client].module.state_dict())
            results[client] = trained
        except Exception as err:  # reported below
            errors.append(err)

    try:
        threads = [threading.Thread(target=run, args=(c,)) for c in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
    finally:
        _stop(servers.values())
    for client in plans:
        expected = _reference(model, data[client], _optimizer)
        assert results[client].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(results[client][key], value, atol=1e-6, rtol=0,
                                       msg=f"client {client}: {key}")
    fwd = {t.client for t in servers[101].worker.executed if t.kind == "fwd"}
    assert fwd == {"1", "2", "4"}


def test_a_chain_carries_the_clients_codecs_on_every_hop():
    """Every hop's frames are coded with the codecs the client asked for: the next hop's
    connection of the first helper sends and receives fewer bytes than raw, and training
    stays close to the raw chain."""
    from flsplit.config import parse_codec

    results = {}
    for spelling in ("none", "fp16"):
        torch.manual_seed(0)
        model = Deep().double()
        split = split_model(model, CUTS[2], torch.zeros(2, 6, dtype=torch.float64))
        servers, helpers = _start_chain(split, ["a"], _optimizer)
        codec = parse_codec(spelling)
        try:
            opt = _optimizer(itertools.chain(split.head.parameters(), split.tail.parameters()))
            with HelperClient(servers[0].address, "a", _token("a", helpers[0]), deadline=30,
                              codecs=(codec, codec)) as helper:
                result = train_split(split.head, split.tail, helper, _data(1, batches=3),
                                     nn.functional.cross_entropy, opt)
                client_bytes = helper.bytes_up
            assert servers[0].wait_clients(10)
            hop = servers[0].relay.next_hops["a"]
            results[spelling] = (result.loss, client_bytes, hop.bytes_up, hop.bytes_down)
        finally:
            _stop(servers)
    raw, coded = results["none"], results["fp16"]
    assert coded[1] < raw[1]  # client -> first helper
    assert coded[2] < raw[2] and coded[3] < raw[3]  # first helper <-> second helper
    assert abs(coded[0] - raw[0]) < 1e-2


def _hop_bytes(own_codec):
    torch.manual_seed(0)
    model = Deep().double()
    split = split_model(model, CUTS[2], torch.zeros(2, 6, dtype=torch.float64))
    servers, helpers = _start_chain(split, ["a"], _optimizer)
    hop = servers[0].relay.next_hops["a"]
    if own_codec is not None:
        hop.codecs = {"fwd": own_codec, "bwd": own_codec}
    try:
        opt = _optimizer(itertools.chain(split.head.parameters(), split.tail.parameters()))
        with HelperClient(servers[0].address, "a", _token("a", helpers[0]), deadline=30) as helper:
            train_split(split.head, split.tail, helper, _data(1, batches=2),
                        nn.functional.cross_entropy, opt)
            client_bytes = helper.bytes_up, helper.bytes_down
        assert servers[0].wait_clients(10)
    finally:
        _stop(servers)
    return client_bytes, (hop.bytes_up, hop.bytes_down)


def test_a_helpers_own_codec_for_its_next_hop_wins_over_the_clients():
    """A helper whose node config sets a codec for its links to next hops codes those
    frames with it, whatever the client asked for (here: raw from the client, fp16
    between the helpers)."""
    from flsplit.config import parse_codec

    raw_client, raw_hop = _hop_bytes(None)
    client, hop = _hop_bytes(parse_codec("fp16"))
    assert client[0] == raw_client[0]  # the client's link: raw, as it asked
    # the hop's: its 10 x 12 float64 activations and the gradients in 2 bytes a value
    saved = 2 * (10 * 12 * 6 + 10 * 4 * 6)  # two batches, 8 -> 2 bytes a value
    assert raw_hop[0] - hop[0] >= saved * 0.9
    assert hop[1] < raw_hop[1]
