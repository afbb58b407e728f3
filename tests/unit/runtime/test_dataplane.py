"""Split training over the real gRPC data plane: signed tokens, checked frames, TLS."""

import copy
import datetime
import ipaddress
import itertools
import logging
import time

import pytest
import torch
from torch import nn

from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.runtime import wire
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import DataPlaneError, HelperClient, HelperConnectionError
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker, TensorSpec

SECRET = new_run_secret()
RUN, ROUND, HELPER = 5, 2, 100
KEY = helper_key(SECRET, RUN, HELPER)
BODY_INPUT = TensorSpec((16, 8, 8), torch.float32)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _token(client, run=RUN, rnd=ROUND, helper=HELPER, key=KEY):
    return sign_token(key, run, rnd, client, helper)


def _serve(body, clients, spec=BODY_INPUT, **kwargs):
    worker = HelperWorker.replicated(body, list(clients), _sgd, input_spec=spec)
    verifier = TokenVerifier(KEY, RUN, ROUND, HELPER, clients)
    return HelperServer(worker, verifier, address="127.0.0.1:0", **kwargs).start()


def _split(model):
    return split_model(model, ("conv2", "fc2"), torch.zeros(2, 1, 8, 8))


def test_one_batch_over_the_data_plane_equals_one_sgd_step_of_the_unsplit_model():
    torch.manual_seed(0)
    model = SmallCNN()
    split = _split(model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    reference = copy.deepcopy(model)
    optimizer = _sgd(reference.parameters())
    nn.functional.cross_entropy(reference(x), y).backward()
    optimizer.step()

    server = _serve(split.body, ["1"])
    try:
        head_tail_opt = _sgd(itertools.chain(split.head.parameters(), split.tail.parameters()))
        with HelperClient(server.address, "1", _token("1"), deadline=30) as helper:
            result = train_split(
                split.head, split.tail, helper, [(x, y)], nn.functional.cross_entropy, head_tail_opt
            )
        assert server.wait_clients(10)
    finally:
        server.stop()
    assert result.examples == 16 and result.batches == 1
    trained = {
        **split.head.state_dict(),
        **server.worker.bodies["1"].module.state_dict(),
        **split.tail.state_dict(),
    }
    expected = reference.state_dict()
    assert trained.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(trained[key], value, atol=1e-5, rtol=0, msg=key)
    assert not torch.equal(expected["conv2.weight"], model.state_dict()["conv2.weight"])


class _SleepingLoader:
    """A data loader that takes ``seconds`` to produce each batch (iterable again)."""

    def __init__(self, batches, seconds):
        self.batches, self.seconds = batches, seconds

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.seconds)
            yield batch


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_time_a_client_waits_for_its_loader_is_measured_apart_from_the_stages(
    micro_batches,
):
    torch.manual_seed(0)
    split = _split(SmallCNN())
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    sleep = 0.1
    server = _serve(split.body, ["1"])
    try:
        optimizer = _sgd(itertools.chain(split.head.parameters(), split.tail.parameters()))
        with HelperClient(server.address, "1", _token("1"), deadline=30) as helper:
            result = train_split(
                split.head, split.tail, helper, _SleepingLoader(batches, sleep),
                nn.functional.cross_entropy, optimizer, epochs=2, micro_batches=micro_batches,
            )
        assert server.wait_clients(10)
    finally:
        server.stop()
    assert result.batches == 6
    assert result.load_ms >= 1000 * sleep  # mean per batch: every batch slept that long
    # the loader's time is in no stage: stages, helper time and loading never overlap
    busy = result.stage1_ms + result.stage3_ms + result.stage5_ms + result.helper_service_ms
    assert result.batches * (busy + result.load_ms) <= 1000 * result.wall_seconds + 5


FORGERIES = [
    ("mallory", _token("mallory"), "not served by this helper"),
    ("a", "", "no round token"),
    ("a", "wrong", "malformed round token"),
    ("a", _token("a", rnd=ROUND - 1), "for round 1, not 2"),
    ("a", _token("a", run=RUN + 1), "another run"),
    ("a", _token("a", helper=101, key=helper_key(SECRET, RUN, 101)), "another helper"),
    ("a", _token("b"), "not its own"),
    ("a", _token("a", key=helper_key(new_run_secret(), RUN, HELPER)), "not its own"),
    ("a", _token("a")[:-4] + "AAAA", "not its own"),
    ("b", _token("a"), "not its own"),
]


# The tokens are signed with a random secret: test ids without them are the same in every
# process (pytest-xdist's workers must collect the same tests).
@pytest.mark.parametrize(
    ("client", "token", "reason"), FORGERIES,
    ids=[f"{i}-{client}-{reason}" for i, (client, _, reason) in enumerate(FORGERIES)],
)  # fmt: skip
def test_bad_tokens_are_refused_and_the_other_clients_finish(client, token, reason, caplog):
    torch.manual_seed(0)
    split = _split(SmallCNN())
    clients = ["a", "b"]
    server = _serve(split.body, clients)
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    try:
        with caplog.at_level(logging.WARNING, logger="flsplit.dataplane"):
            intruder = HelperClient(server.address, client, token, deadline=10)
            with intruder, pytest.raises(DataPlaneError, match="UNAUTHENTICATED") as refused:
                intruder.forward(torch.randn(4, 16, 8, 8))
        assert reason in str(refused.value)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and reason in warnings[0].getMessage()
        mac = _token(client).rsplit(".", 1)[1]
        assert KEY.hex() not in caplog.text and mac not in caplog.text
        if token:
            assert token not in caplog.text
        for name in clients:
            head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
            opt = _sgd(itertools.chain(head.parameters(), tail.parameters()))
            with HelperClient(server.address, name, _token(name), deadline=10) as helper:
                result = train_split(head, tail, helper, batches, nn.functional.cross_entropy, opt)
            assert result.batches == 2
        assert server.wait_clients(10)
    finally:
        server.stop()
    assert sorted(server.finished) == ["a", "b"]
    assert server.refused_count == 1 and reason in server.refused[0]


@pytest.mark.parametrize(
    ("tensor", "field"),
    [
        (torch.randn(4, 3, 2), "tensor shape"),
        (torch.randn(4, 16, 8, 9), "tensor shape"),
        (torch.randn(4, 16, 8, 8, dtype=torch.float64), "tensor dtype"),
        (torch.randn(0, 16, 8, 8), "batch dimension"),
        (torch.randn(()), "batch dimension"),
        (torch.full((4, 16, 8, 8), float("nan")), "NaN"),
        (torch.full((4, 16, 8, 8), float("inf")), "NaN or infinite"),
    ],
)
def test_bad_forward_frames_get_invalid_argument_naming_the_field(tensor, field):
    split = _split(SmallCNN())
    server = _serve(split.body, ["a"])
    try:
        with HelperClient(server.address, "a", _token("a"), deadline=10) as helper:
            with pytest.raises(DataPlaneError, match="INVALID_ARGUMENT") as bad:
                helper.forward(tensor)
            assert field in str(bad.value)
            out = helper.forward(torch.randn(4, 16, 8, 8))
            assert out.shape == (4, 64)
    finally:
        server.stop()
    assert server.invalid_count == 1


def test_a_bad_gradient_leaves_the_batch_in_flight_and_a_good_retry_matches_the_reference():
    torch.manual_seed(1)
    split = _split(SmallCNN())
    body = copy.deepcopy(split.body)
    reference = copy.deepcopy(body)
    ref_opt = _sgd(reference.parameters())
    x = torch.randn(4, 16, 8, 8)
    grad = torch.randn(4, 64)
    x_ref = x.clone().requires_grad_(True)
    reference(x_ref).backward(grad)
    ref_opt.step()

    server = _serve(body, ["a"])
    try:
        with HelperClient(server.address, "a", _token("a"), deadline=10) as helper:
            helper.forward(x)
            bad_grads = [
                (torch.randn(4, 63), "tensor shape"),
                (torch.randn(5, 64), "tensor shape"),
                (grad.double(), "tensor dtype"),
                (torch.full((4, 64), float("nan")), "NaN"),
            ]
            for bad, field in bad_grads:
                with pytest.raises(DataPlaneError, match="INVALID_ARGUMENT") as refused:
                    helper.backward(bad)
                assert field in str(refused.value)
            grad_in = helper.backward(grad)
            with pytest.raises(DataPlaneError, match="FAILED_PRECONDITION"):
                helper.backward(grad)  # the batch is done: no second step on it
            helper.finish()  # a client that leaves without finishing is released
    finally:
        server.stop()
    torch.testing.assert_close(grad_in, x_ref.grad, atol=1e-6, rtol=0)
    trained = server.worker.bodies["a"].module.state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(trained[key], value, atol=1e-6, rtol=0, msg=key)
    assert server.worker.bodies["a"].batches == 1


def test_an_oversized_frame_is_refused_and_a_wrong_op_too():
    split = _split(SmallCNN())
    server = _serve(split.body, ["a"], max_frame_bytes=64 * 1024)
    try:
        with HelperClient(server.address, "a", _token("a"), deadline=10) as helper:
            with pytest.raises(DataPlaneError, match=r"INVALID_ARGUMENT.*exceeds the limit"):
                helper.forward(torch.randn(20, 16, 8, 8))
            frame = wire.encode(wire.Frame("bwd", "a", _token("a"), 1, torch.randn(4, 64)))
            with pytest.raises(Exception, match="op 'bwd' sent to 'fwd'"):
                helper._calls["Forward"](frame, timeout=10)
    finally:
        server.stop()


def test_without_a_spec_the_first_forward_that_ran_fixes_the_input_shape():
    split = _split(SmallCNN())
    server = _serve(split.body, ["a"], spec=None)
    try:
        with HelperClient(server.address, "a", _token("a"), deadline=10) as helper:
            with pytest.raises(DataPlaneError, match="INVALID_ARGUMENT"):
                helper.forward(torch.randn(4, 3, 2))  # the body cannot run it: no spec learned
            helper.forward(torch.randn(4, 16, 8, 8))
            with pytest.raises(DataPlaneError, match="tensor shape"):
                helper.forward(torch.randn(4, 16, 4, 4))
            assert helper.forward(torch.randn(2, 16, 8, 8)).shape == (2, 64)
    finally:
        server.stop()


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed():
    """A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flsplit test helper")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_a_tls_client_completes_a_batch(self_signed):
    cert, key = self_signed
    torch.manual_seed(0)
    split = _split(SmallCNN())
    server = _serve(split.body, ["a"], tls_cert=cert, tls_key=key)
    assert server.tls
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    try:
        opt = _sgd(itertools.chain(split.head.parameters(), split.tail.parameters()))
        with HelperClient(
            server.address, "a", _token("a"), deadline=10, tls_root_cert=cert
        ) as helper:
            assert helper.tls
            result = train_split(
                split.head, split.tail, helper, batches, nn.functional.cross_entropy, opt
            )
        assert server.wait_clients(10)
    finally:
        server.stop()
    assert result.batches == 1 and server.worker.bodies["a"].batches == 1


def test_a_plaintext_client_against_a_tls_helper_fails_clearly(self_signed):
    cert, key = self_signed
    split = _split(SmallCNN())
    server = _serve(split.body, ["a"], tls_cert=cert, tls_key=key)
    try:
        helper = HelperClient(server.address, "a", _token("a"), deadline=60)
        with helper, pytest.raises(HelperConnectionError, match="TLS mismatch") as failed:
            helper.forward(torch.randn(4, 16, 8, 8))
        assert "serves TLS" in str(failed.value) and "plaintext" in str(failed.value)
        assert "within" not in str(failed.value)  # said at once, not at the deadline
    finally:
        server.stop()
    assert server.worker.executed == []


def test_a_tls_client_against_a_plaintext_helper_fails_clearly(self_signed):
    cert, _ = self_signed
    split = _split(SmallCNN())
    server = _serve(split.body, ["a"])
    try:
        client = HelperClient(server.address, "a", _token("a"), deadline=60, tls_root_cert=cert)
        with client, pytest.raises(
            HelperConnectionError, match=r"TLS mismatch: this client expects TLS.*serves plaintext"
        ):
            client.forward(torch.randn(4, 16, 8, 8))
    finally:
        server.stop()


def test_tls_needs_both_certificate_and_key(self_signed):
    cert, _ = self_signed
    worker = HelperWorker.replicated(nn.Linear(2, 2), ["a"], _sgd)
    try:
        with pytest.raises(DataPlaneError, match="both a certificate and its private key"):
            HelperServer(worker, TokenVerifier(KEY, RUN, ROUND, HELPER, ["a"]), tls_cert=cert)
    finally:
        worker.stop()


def test_a_missing_helper_fails_within_the_deadline():
    helper = HelperClient("127.0.0.1:1", "a", "t", deadline=1.0)
    with helper, pytest.raises(
        HelperConnectionError, match=r"within 1 s: connection refused: nothing listens"
    ):
        helper.forward(torch.zeros(1, 2))


def test_tls_settings_come_from_the_node_config(self_signed, tmp_path):
    from flwr.app import Context, RecordDict

    from flsplit.client.node import client_tls, helper_tls

    cert, key = self_signed
    (tmp_path / "h.pem").write_bytes(cert)
    (tmp_path / "h.key").write_bytes(key)

    def context(**node):
        return Context(1, 2, node, RecordDict(), {})

    assert helper_tls(context(role="helper")) is None
    assert client_tls(context(role="client")) == (None, None)
    pair = helper_tls(
        context(
            **{"data-tls-cert": str(tmp_path / "h.pem"), "data-tls-key": str(tmp_path / "h.key")}
        )
    )
    assert pair == (cert, key)
    root = {"data-tls-root-cert": str(tmp_path / "h.pem"), "data-tls-server-name": "helper1"}
    assert client_tls(context(**root)) == (cert, "helper1")
    with pytest.raises(ValueError, match="go together"):
        helper_tls(context(**{"data-tls-cert": str(tmp_path / "h.pem")}))
    with pytest.raises(DataPlaneError, match="data-tls-root-cert: cannot read"):
        client_tls(context(**{"data-tls-root-cert": str(tmp_path / "missing.pem")}))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(DataPlaneError, match="not a PEM file"):
        client_tls(context(**{"data-tls-root-cert": str(tmp_path / "junk.pem")}))


def test_a_client_that_goes_silent_is_dropped_and_the_others_finish():
    torch.manual_seed(0)
    split = _split(SmallCNN())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    server = _serve(split.body, ["gone", "stays"], idle_timeout=1.0)
    # "gone" sends one forward and falls silent mid-batch, its connection open (a hung
    # client: a closed one is released at once, see test_dataplane_failures.py).
    gone = HelperClient(server.address, "gone", _token("gone"), deadline=30)
    try:
        gone.forward(split.head(x).detach())
        optimizer = _sgd(itertools.chain(split.head.parameters(), split.tail.parameters()))
        with HelperClient(server.address, "stays", _token("stays"), deadline=30) as helper:
            result = train_split(
                split.head, split.tail, helper, [(x, y)] * 3, nn.functional.cross_entropy,
                optimizer,
            )
        assert server.wait_clients(30), "the helper kept waiting for the silent client"
        # A late request of the dropped client is refused, not served.
        with (
            HelperClient(server.address, "gone", _token("gone"), deadline=10) as late,
            pytest.raises(DataPlaneError, match="dropped"),
        ):
            late.forward(split.head(x).detach())
    finally:
        server.stop()
        gone.close()
    assert result.batches == 3
    assert set(server.finished) == {"stays"}
    assert set(server.dropped) == {"gone"}
    assert "gone" not in server.worker.bodies, "the dropped client's state was kept"


def test_connect_waits_for_a_helper_that_comes_up_late():
    import socket
    import threading

    with socket.socket() as probe:  # a port nobody listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = HelperClient(f"127.0.0.1:{port}", "1", _token("1"), deadline=60)
    connecting = threading.Thread(target=client.connect)
    connecting.start()
    # the client's first attempts are refused: the helper is still starting
    worker = HelperWorker.replicated(_split(SmallCNN()).body, ["1"], _sgd, input_spec=BODY_INPUT)
    server = HelperServer(
        worker, TokenVerifier(KEY, RUN, ROUND, HELPER, ["1"]), address=f"127.0.0.1:{port}"
    ).start()
    try:
        connecting.join(60)
        assert not connecting.is_alive() and client._connected
    finally:
        client.close()
        server.stop()
