"""Failures on the real gRPC data plane explain themselves and cost no waiting.

A client that fails mid-round tells its helper (``Abort``, or its ``Watch`` call ends with
its connection), and the helper releases it at once: these tests give the helper an idle
timeout of an hour, so a helper that waited for it would not finish its round (the
``wait_clients`` calls below would return ``False``). A connection that cannot be made
fails with a message naming the cause: the TLS cases at once (the message is the
diagnosis itself, not the deadline's), refused and unanswered at the deadline.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import itertools
import logging
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch import nn

from flsplit.model.client_view import ClientModel
from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.runtime import diagnose, helper_client, wire
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import DataPlaneError, HelperClient, HelperConnectionError
from flsplit.runtime.remote_body import RemoteBody
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker, TensorSpec
from tests.paths import ROOT
from tests.unit.runtime.test_chain import CUTS, Deep

SECRET = new_run_secret()
RUN, ROUND, HELPER = 8, 4, 200
KEY = helper_key(SECRET, RUN, HELPER)
BODY_INPUT = TensorSpec((16, 8, 8), torch.float32)
HOUR = 3600.0  # the helpers' idle timeout: never reached in these tests


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def _token(client):
    return sign_token(KEY, RUN, ROUND, client, HELPER)


def _split(model=None):
    return split_model(model or SmallCNN(), ("conv2", "fc2"), torch.zeros(2, 1, 8, 8))


def _serve(body, clients, **kwargs):
    worker = HelperWorker.replicated(body, list(clients), _sgd, input_spec=BODY_INPUT)
    verifier = TokenVerifier(KEY, RUN, ROUND, HELPER, list(clients))
    return HelperServer(worker, verifier, address="127.0.0.1:0", **kwargs).start()


def _batches(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
            for _ in range(n)]


def _train(split, server, client, batches):
    head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
    optimizer = _sgd(itertools.chain(head.parameters(), tail.parameters()))
    with HelperClient(server.address, client, _token(client), deadline=60) as helper:
        return train_split(head, tail, helper, batches, nn.functional.cross_entropy, optimizer)


def _failing_loader(good, error):
    """Batches that yield ``good`` and then raise ``error`` (a loader failing mid-round)."""
    yield from good
    raise error


# -- a client failing mid-round -------------------------------------------------------


def test_a_client_whose_loader_fails_mid_round_is_released_at_once(caplog):
    torch.manual_seed(0)
    split = _split()
    server = _serve(split.body, ["crash", "stays"], idle_timeout=HOUR)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="flsplit.dataplane"),
            pytest.raises(OSError, match="disk gone"),  # the client's own error says it
        ):
            _train(split, server, "crash", _failing_loader(_batches(2), OSError("disk gone")))
        result = _train(split, server, "stays", _batches(3))
        assert server.wait_clients(60), "the helper still waits for the crashed client"
    finally:
        server.stop()
    assert result.batches == 3
    assert server.finished.keys() == {"stays"} and not server.dropped
    assert server.aborted == {"crash": "OSError: disk gone"}
    assert "crash" not in server.worker.bodies, "the aborted client's state was kept"
    assert "client 'crash' aborted: OSError: disk gone" in caplog.text


def test_an_aborted_client_is_refused_afterwards_and_a_repeated_abort_changes_nothing():
    split = _split()
    server = _serve(split.body, ["a", "b"], idle_timeout=HOUR)
    try:
        with HelperClient(server.address, "a", _token("a"), deadline=30) as helper:
            assert helper.abort("ValueError: no data")
            assert not helper.abort("RuntimeError: again")  # sent once per round
        with (
            HelperClient(server.address, "a", _token("a"), deadline=30) as late,
            pytest.raises(DataPlaneError, match=r"FAILED_PRECONDITION.*aborted this round"),
        ):
            late.forward(torch.randn(2, 16, 8, 8))
        with HelperClient(server.address, "a", _token("a"), deadline=30) as again:
            assert again.abort("RuntimeError: again")  # taken, but nothing changes
        assert not server.wait_clients(0.1)  # "b" is still awaited
    finally:
        server.stop()
    assert server.aborted == {"a": "ValueError: no data"}


def test_an_app_training_function_raising_mid_round_releases_the_client(caplog):
    torch.manual_seed(0)
    split = _split()
    server = _serve(split.body, ["own"], idle_timeout=HOUR)
    x, y = _batches(1)[0]

    def train_fn(net):  # the app's loop: one good batch, then its loss code fails
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        net(x)
        raise FloatingPointError("loss is nan\nat batch 2")

    try:
        with (
            caplog.at_level(logging.WARNING, logger="flsplit.dataplane"),
            pytest.raises(FloatingPointError),
            HelperClient(server.address, "own", _token("own"), deadline=60) as helper,
            RemoteBody(helper, split.head, split.tail) as body,
        ):
            train_fn(ClientModel(split.head, split.tail, body, ["conv2", "fc1"]))
        assert server.wait_clients(60)
    finally:
        server.stop()
    # the first line of the cause: the reason is one printable line
    assert server.aborted == {"own": "FloatingPointError: loss is nan"}
    assert "client 'own' aborted: FloatingPointError: loss is nan" in caplog.text


def test_a_client_failing_before_it_connected_still_tells_its_helper():
    split = _split()
    server = _serve(split.body, ["early", "stays"], idle_timeout=HOUR)
    try:
        with (
            pytest.raises(ValueError, match="partition-id 9"),
            HelperClient(server.address, "early", _token("early"), deadline=60),
        ):
            raise ValueError("partition-id 9 is out of range")  # e.g. in load_data
        _train(split, server, "stays", _batches(1))
        assert server.wait_clients(60)
    finally:
        server.stop()
    assert server.aborted == {"early": "ValueError: partition-id 9 is out of range"}


def test_a_client_process_killed_mid_round_is_released_when_its_connection_closes():
    """No abort at all: the process dies (SIGKILL) after its first forward; its open
    ``Watch`` call ends with its connection."""
    split = _split()
    server = _serve(split.body, ["killed", "stays"], idle_timeout=HOUR)
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from flsplit.runtime.helper_client import HelperClient
        helper = HelperClient({server.address!r}, "killed", {_token("killed")!r}, deadline=60)
        helper.forward(torch.randn(2, 16, 8, 8))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    try:
        killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120)
        assert killed.returncode == -9
        _train(split, server, "stays", _batches(2))
        assert server.wait_clients(60), "the helper still waits for the killed client"
    finally:
        server.stop()
    assert set(server.finished) == {"stays"}
    assert "connection closed before it finished" in server.aborted["killed"]


def test_an_abort_is_authenticated_and_its_reason_validated():
    split = _split()
    server = _serve(split.body, ["a"], idle_timeout=HOUR)
    try:
        with HelperClient(server.address, "a", "forged", deadline=30) as intruder:
            assert not intruder.abort("ValueError: let me go")
        for bad in ["line\nbreak", "x" * (wire.MAX_REASON_CHARS + 1)]:
            frame = wire.encode(wire.Frame("abort", "a", _token("a")))
            header_len = int.from_bytes(frame[4:8], "little")
            header = frame[8 : 8 + header_len].replace(
                b'"tensor":null', b'"tensor":null,"reason":' + _json(bad)
            )
            with pytest.raises(wire.FrameError, match="'reason'"):
                wire.decode(frame[:4] + len(header).to_bytes(4, "little") + header)
            channel = helper_client.grpc.insecure_channel(server.address)
            call = channel.unary_unary(f"/{helper_client.SERVICE}/Abort")
            with pytest.raises(helper_client.grpc.RpcError) as refused:
                call(frame[:4] + len(header).to_bytes(4, "little") + header, timeout=10)
            assert refused.value.code().name == "INVALID_ARGUMENT"
            assert "'reason'" in refused.value.details()
            channel.close()
    finally:
        server.stop()
    assert not server.aborted and server.refused_count == 1
    assert wire.short_reason(ValueError("a\x1b[31m\nb")) == "ValueError: a?[31m"


def _json(text: str) -> bytes:
    import json

    return json.dumps(text).encode()


def test_an_abort_is_relayed_along_a_chain():
    torch.manual_seed(0)
    split = split_model(Deep().double(), CUTS[2], torch.zeros(2, 6, dtype=torch.float64))
    key2 = helper_key(SECRET, RUN, HELPER + 1)
    last = HelperServer(
        HelperWorker({"c": split.parts[2]}, _sgd),
        TokenVerifier(key2, RUN, ROUND, HELPER + 1, ["c"]),
        idle_timeout=HOUR,
    ).start()
    hop = HelperClient(last.address, "c", sign_token(key2, RUN, ROUND, "c", HELPER + 1), 30)
    first = HelperServer(
        HelperWorker({"c": split.parts[1]}, _sgd),
        TokenVerifier(KEY, RUN, ROUND, HELPER, ["c"]),
        idle_timeout=HOUR,
        next_hops={"c": hop},
    ).start()
    try:
        with pytest.raises(KeyError), HelperClient(first.address, "c", _token("c"), 30) as h:
            h.forward(split.head(torch.randn(3, 6, dtype=torch.float64)).detach())
            raise KeyError("label 7")
        assert first.wait_clients(30) and last.wait_clients(30)
    finally:
        first.stop()
        last.stop()
    assert first.aborted == last.aborted == {"c": "KeyError: 'label 7'"}


# -- connection errors -----------------------------------------------------------------


def _ca(name="flsplit test CA"):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca, names=("localhost",), ips=("127.0.0.1",), expired=False):
    """A helper certificate signed by ``ca``: (cert PEM, key PEM, CA PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(days=3 if expired else 1)
    end = now - datetime.timedelta(days=2) if expired else now + datetime.timedelta(days=1)
    sans = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "helper")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return (
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        ca_cert.public_bytes(pem),
    )


@pytest.fixture(scope="module")
def pki():
    ca, other = _ca(), _ca("another CA")
    return {
        "helper": _leaf(ca),
        "named": _leaf(ca, names=("helper1.example",), ips=()),
        "expired": _leaf(ca, expired=True),
        "other-ca": _leaf(other)[2],
    }


# (helper's certificate, client's root, client's server name, kind, words of the message)
MISMATCHES = {
    "plaintext client, TLS helper": (
        "helper", None, None, diagnose.HELPER_TLS,
        ["TLS mismatch", "serves TLS", "connects in plaintext", "data-tls-root-cert"],
    ),
    "TLS client, plaintext helper": (
        None, "helper", None, diagnose.HELPER_PLAINTEXT,
        ["TLS mismatch", "expects TLS", "serves plaintext", "data-tls-cert"],
    ),
    "wrong root certificate": (
        "helper", "other-ca", None, diagnose.WRONG_ROOT,
        ["does not verify against this client's data-tls-root-cert"],
    ),
    "name mismatch": (
        "named", "named", None, diagnose.NAME_MISMATCH,
        ["not valid for '127.0.0.1'", "helper1.example", "data-tls-server-name"],
    ),
    "expired certificate": (
        "expired", "expired", None, diagnose.EXPIRED, ["expired", "data-tls-cert"],
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_tls_problem_fails_at_once_naming_its_cause(case, pki):
    served, root, name, kind, words = MISMATCHES[case]
    tls = {}
    if served is not None:
        tls = {"tls_cert": pki[served][0], "tls_key": pki[served][1]}
    root_pem = None if root is None else pki[root] if root == "other-ca" else pki[root][2]
    server = _serve(_split().body, ["a"], idle_timeout=HOUR, **tls)
    try:
        client = HelperClient(server.address, "a", _token("a"), deadline=HOUR,
                              tls_root_cert=root_pem, tls_server_name=name)
        with client, pytest.raises(HelperConnectionError) as failed:
            client.connect()
    finally:
        server.stop()
    message = str(failed.value)
    assert failed.value.kind == kind
    assert message.startswith(f"helper {server.address}: ")  # the diagnosis, at once
    for word in words:
        assert word in message
    assert server.worker.executed == []


def test_the_server_name_setting_fixes_a_name_mismatch(pki):
    cert, key, ca = pki["named"]
    server = _serve(_split().body, ["a"], tls_cert=cert, tls_key=key)
    try:
        with HelperClient(server.address, "a", _token("a"), deadline=30, tls_root_cert=ca,
                          tls_server_name="helper1.example") as client:
            client.connect()
            client.forward(torch.randn(2, 16, 8, 8))
    finally:
        server.stop()


def test_a_refused_port_is_named_and_warned_about_while_the_client_waits(monkeypatch, caplog):
    monkeypatch.setattr(helper_client, "WARN_AFTER", 0.0)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HelperClient(f"127.0.0.1:{port}", "a", "t", deadline=1.5)
    with (
        caplog.at_level(logging.WARNING, logger="flsplit.dataplane"),
        client,
        pytest.raises(HelperConnectionError) as failed,
    ):
        client.connect()
    assert failed.value.kind == diagnose.REFUSED
    assert str(failed.value).startswith(
        f"helper 127.0.0.1:{port} did not accept a connection within 2 s: connection "
        f"refused: nothing listens at 127.0.0.1:{port}"
    )
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "connection refused" in warned[0] and "waiting" in warned[0]


def test_a_port_that_does_not_answer_is_named_a_timeout():
    with socket.socket() as listener:  # accepts nothing: once its backlog is full, new
        listener.bind(("127.0.0.1", 0))  # connections get no answer
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        client = HelperClient(f"127.0.0.1:{port}", "a", "t", deadline=4)
        try:
            with client, pytest.raises(HelperConnectionError) as failed:
                client.connect()
        finally:
            for filler in fillers:
                filler.close()
    assert failed.value.kind == diagnose.TIMEOUT
    assert "did not accept a connection within 4 s: no answer from" in str(failed.value)


def test_a_helper_that_stops_mid_round_fails_the_next_request_at_once():
    split = _split()
    server = _serve(split.body, ["a"])
    client = HelperClient(server.address, "a", _token("a"), deadline=HOUR)
    try:
        client.forward(torch.randn(2, 16, 8, 8))
        server.stop()
        with pytest.raises(HelperConnectionError, match="the helper stopped serving") as failed:
            client.backward(torch.randn(2, 64))
        assert failed.value.kind == diagnose.REFUSED
        assert not client.abort("RuntimeError: whatever")  # nobody to tell
    finally:
        client.close()
        server.stop()


def test_the_helper_names_a_client_that_never_reached_it(pki, caplog):
    cert, key, _ = pki["helper"]
    server = _serve(_split().body, ["a"], idle_timeout=1.0, tls_cert=cert, tls_key=key)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="flsplit.dataplane"),
            HelperClient(server.address, "a", _token("a"), deadline=30) as plaintext,
            pytest.raises(HelperConnectionError),
        ):
            plaintext.connect()
        assert server.wait_clients(30)
    finally:
        server.stop()
    assert server.dropped == {"a": "never reached the helper in 1 s"}
    logged = [r.getMessage() for r in caplog.records if "never reached" in r.getMessage()]
    assert len(logged) == 1
    assert "disagrees on TLS: this helper serves TLS" in logged[0]
    assert "data-tls-root-cert" in logged[0]


def test_the_probe_reads_ipv6_and_scheme_addresses():
    assert diagnose.split_address("[::1]:9800") == ("::1", 9800)
    assert diagnose.split_address("ipv4:10.0.0.2:1") == ("10.0.0.2", 1)
    assert diagnose.split_address("helper.local:9800") == ("helper.local", 9800)
    with pytest.raises(ValueError, match="no port"):
        diagnose.split_address("helper.local")
    assert diagnose.probe("helper.local").kind == diagnose.UNRESOLVED


def test_the_helpers_reply_lists_the_aborted_client_with_its_cause(monkeypatch):
    """The helper role's round (``_serve_round``) with a client that aborts: its reply to
    the server names the client and the reason, and carries no body for it."""
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from flsplit.client.helper_role import _serve_round
    from flsplit.protocol import HELPER_TRAIN, HelperResult, HelperRound, ServedClient, bodies_of

    for name, value in (("_task_id", 1), ("_run_id", RUN), ("_node_id", HELPER)):
        monkeypatch.setattr(TaskIdentity, name, value)
    torch.manual_seed(0)
    split = _split()
    server = _serve(split.body, ["1", "2"], idle_timeout=HOUR)
    round_ = HelperRound(ROUND, [ServedClient("1", "conv2,fc2"), ServedClient("2", "conv2,fc2")],
                         KEY, server.address, round_timeout=HOUR)
    errors = []

    def crashing():
        try:
            _train(split, server, "1",
                   _failing_loader(_batches(1), RuntimeError("CUDA error: out of memory")))
        except RuntimeError as err:
            errors.append(err)

    crash = threading.Thread(target=crashing)
    stays = threading.Thread(target=_train, args=(split, server, "2", _batches(2)))
    crash.start()
    stays.start()
    try:
        msg = Message(RecordDict(), dst_node_id=HELPER, message_type=HELPER_TRAIN)
        reply = _serve_round(msg, round_, ["1", "2"], server.worker, server)
    finally:
        crash.join(60)
        stays.join(60)
    assert [str(e) for e in errors] == ["CUDA error: out of memory"]
    result = HelperResult.from_content(reply.content)
    assert result.finished == ["2"] and result.dropped == []
    assert result.aborted == {"1": "RuntimeError: CUDA error: out of memory"}
    assert set(bodies_of(reply.content)) == {2}
