"""Benchmark: what a data-plane failure costs and what it says.

Two parts, on loopback with the real gRPC data plane (:mod:`flsplit.runtime.dataplane`):

``crash``
    One helper (this process) serves ``--clients`` clients, each a separate process
    training the small CNN through it with flsplit's own loop; one of them fails after
    ``--crash-after`` batches. Per way of failing, the seconds from the helper's last
    other client finishing to the helper's round ending (``wait_clients`` returning), and
    from the failure to the helper releasing the client. Ways of failing: ``raise`` (the
    client's loader raises: its ``HelperClient`` sends ``Abort`` with the cause),
    ``kill`` (the client process is SIGKILLed: the helper sees its ``Watch`` call end)
    and ``hang`` (the process stops but keeps its connection open: only the helper's
    ``--idle-timeout`` ends the wait, as every crash did before the abort existed).
``connect``
    For each connection error a client can meet (a TLS mismatch both ways, a wrong root
    certificate, a certificate for another name, an expired one, a refused port, a port
    that does not answer), the seconds from ``HelperClient.connect()`` to its error, and
    the error's message. The client's deadline is ``--deadline`` (the run config's
    ``call-deadline``); a refused or unanswered port is waited out until then (the helper
    may still be starting), with a warning after ``WARN_AFTER`` seconds, whose time is
    printed too.

Prints one JSON line per case, then a summary. Run ``python -m benchmarks.failures``
(``--help`` for the options).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import itertools
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.runtime.auth import TokenVerifier, helper_key, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import HelperClient, HelperConnectionError
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker, TensorSpec

RUN, ROUND, HELPER = 1, 1, 100
KEY = helper_key(b"flsplit-bench-secret-not-secret!", RUN, HELPER)  # loopback only
CUTS = ("conv2", "fc2")
MODES = ("raise", "kill", "hang")


def _token(client: str) -> str:
    return sign_token(KEY, RUN, ROUND, client, HELPER)


def _split() -> Any:
    torch.manual_seed(0)
    return split_model(SmallCNN(), CUTS, torch.zeros(2, 1, 8, 8))


# -- a client crashing mid-round -------------------------------------------------------


class _TimedServer(HelperServer):
    """A helper server that notes when each client finished or was released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finished_at: dict[str, float] = {}
        self.released_at: dict[str, float] = {}

    def _check_done(self) -> None:  # called with the lock held as a client finishes
        for client in self.finished:
            self.finished_at.setdefault(client, time.time())
        super()._check_done()

    def release(self, client: str, reason: str) -> bool:
        released = super().release(client, reason)
        if released:
            self.released_at[client] = time.time()
        return released


def _client_process(
    address: str, client: str, batches: int, batch_size: int, crash: str | None,
    crash_after: int, crashed_at: Any,
) -> None:
    """One client's round (a process of its own); ``crash`` says how it fails."""
    torch.set_num_threads(1)
    split = _split()
    gen = torch.Generator().manual_seed(sum(client.encode()))
    data = [
        (torch.randn(batch_size, 1, 8, 8, generator=gen),
         torch.randint(0, 10, (batch_size,), generator=gen))
        for _ in range(batches)
    ]

    def loader() -> Any:
        for i, batch in enumerate(data):
            if crash is not None and i == crash_after:
                crashed_at.value = time.time()
                if crash == "raise":
                    raise OSError("input file truncated")
                if crash == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                while True:  # "hang": alive, connection open, silent
                    time.sleep(3600)
            yield batch

    optimizer = torch.optim.SGD(
        itertools.chain(split.head.parameters(), split.tail.parameters()), lr=0.05
    )
    with HelperClient(address, client, _token(client), deadline=120) as helper:
        train_split(split.head, split.tail, helper, loader(), nn.functional.cross_entropy,
                    optimizer)


def crash_case(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One round with one client failing ``mode``; the helper's figures."""
    split = _split()
    clients = [f"good{i}" for i in range(args.clients - 1)] + ["crash"]
    worker = HelperWorker.replicated(
        split.body, clients, lambda p: torch.optim.SGD(p, lr=0.05),
        input_spec=TensorSpec((16, 8, 8), torch.float32),
    )
    server = _TimedServer(
        worker, TokenVerifier(KEY, RUN, ROUND, HELPER, clients),
        idle_timeout=args.idle_timeout,
    ).start()
    ctx = mp.get_context("spawn")
    crashed_at = ctx.Value("d", 0.0)
    processes = [
        ctx.Process(
            target=_client_process,
            args=(server.address, c, args.batches, args.batch_size,
                  mode if c == "crash" else None, args.crash_after, crashed_at),
        )
        for c in clients
    ]
    for process in processes:
        process.start()
    try:
        all_done = server.wait_clients(args.idle_timeout + 120)
        ended = time.time()
    finally:
        server.stop()
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(30)
    good = [server.finished_at[c] for c in clients[:-1] if c in server.finished_at]
    last_good = max(good) if good else float("nan")
    released = server.released_at.get("crash")
    return {
        "part": "crash",
        "mode": mode,
        "clients": args.clients,
        "idle_timeout_s": args.idle_timeout,
        "all_done": all_done,
        "finished": sorted(server.finished),
        "aborted": dict(server.aborted),
        "dropped": dict(server.dropped),
        "last_other_finish_to_round_end_s": round(ended - last_good, 4),
        "failure_to_release_s": round(released - crashed_at.value, 3)
        if released is not None else None,
        "failure_to_round_end_s": round(ended - crashed_at.value, 3),
    }


# -- connection errors -----------------------------------------------------------------


def _certificates() -> dict[str, tuple[bytes, bytes, bytes]]:
    """A CA-signed helper certificate for 127.0.0.1, one for another name, an expired one
    (cert, key, CA PEM each), and another CA ("other-ca": its PEM three times)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM

    def ca(name: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(authority: tuple[Any, Any], sans: list[Any], expired: bool = False) -> tuple:
        ca_cert, ca_key = authority
        key = ec.generate_private_key(ec.SECP256R1())
        start = now - datetime.timedelta(days=3 if expired else 1)
        end = now - datetime.timedelta(days=2) if expired else now + datetime.timedelta(days=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "helper")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(pem), key_pem, ca_cert.public_bytes(pem)

    authority, other = ca("bench CA"), ca("another CA")
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    other_pem = other[0].public_bytes(pem)
    return {
        "helper": leaf(authority, local),
        "named": leaf(authority, [x509.DNSName("helper1.example.org")]),
        "expired": leaf(authority, local, expired=True),
        "other-ca": (other_pem, other_pem, other_pem),
    }


# case -> (helper's certificate or None, client's root or None)
CONNECT_CASES = {
    "tls-mismatch: helper TLS, client plaintext": ("helper", None),
    "tls-mismatch: client TLS, helper plaintext": (None, "helper"),
    "wrong root certificate": ("helper", "other-ca"),
    "wrong name (certificate for helper1.example.org)": ("named", "named"),
    "expired certificate": ("expired", "expired"),
    "refused port": ("refused", None),
    "port that does not answer": ("silent", None),
}


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.times.append(time.perf_counter())


def connect_case(name: str, certs: dict, deadline: float) -> dict[str, Any]:
    """Connect a client to a helper set up for case ``name``; time its error."""
    served, root = CONNECT_CASES[name]
    server, listener, fillers = None, None, []
    if served == "refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{probe.getsockname()[1]}"
    elif served == "silent":  # a full backlog: connection attempts get no answer
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
    else:
        split = _split()
        worker = HelperWorker.replicated(split.body, ["c"], lambda p: torch.optim.SGD(p, lr=0.1))
        tls = {"tls_cert": certs[served][0], "tls_key": certs[served][1]} if served else {}
        server = HelperServer(
            worker, TokenVerifier(KEY, RUN, ROUND, HELPER, ["c"]), **tls
        ).start()
        address = server.address
    warnings = _Warnings()
    logger = logging.getLogger("flsplit.dataplane")
    logger.addHandler(warnings)
    client = HelperClient(address, "c", _token("c"), deadline=deadline,
                          tls_root_cert=certs[root][2] if root else None)
    start = time.perf_counter()
    try:
        client.connect()
        error, kind = "", "connected"
    except HelperConnectionError as err:
        error, kind = str(err), err.kind
    seconds = time.perf_counter() - start
    logger.removeHandler(warnings)
    client.close()
    if server is not None:
        server.stop()
    for sock in [*fillers, listener]:
        if sock is not None:
            sock.close()
    return {
        "part": "connect",
        "case": name,
        "kind": kind,
        "seconds_to_error": round(seconds, 3),
        "seconds_to_warning": round(warnings.times[0] - start, 3) if warnings.times else None,
        "deadline_s": deadline,
        "message": error,
    }


# -- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.failures",
        description="Data-plane failures: a client crashing mid-round (seconds its helper "
        "waits) and connection errors (seconds to the error, and its message).",
    )
    parser.add_argument("--part", choices=("all", "crash", "connect"), default="all")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"ways the client fails, of {', '.join(MODES)}")
    parser.add_argument("--clients", type=int, default=4, help="clients of the helper")
    parser.add_argument("--batches", type=int, default=40, help="batches per client")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crash-after", type=int, default=3,
                        help="batches the failing client trains first")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="the helper's client-idle-timeout (the run config's default "
                        "is 120 s)")
    parser.add_argument("--deadline", type=float, default=20.0,
                        help="the client's call-deadline for the connection cases")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("flsplit.dataplane").setLevel(logging.WARNING)
    rows = []
    if args.part in ("all", "crash"):
        for mode in [m for m in args.modes.split(",") if m]:
            if mode not in MODES:
                raise SystemExit(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
            rows.append(crash_case(mode, args))
            print(json.dumps(rows[-1]), flush=True)
    if args.part in ("all", "connect"):
        certs = _certificates()
        for name in CONNECT_CASES:
            rows.append(connect_case(name, certs, args.deadline))
            print(json.dumps(rows[-1]), flush=True)
    print("\nsummary", file=sys.stderr)
    for row in rows:
        if row["part"] == "crash":
            print(
                f"  crash {row['mode']:5}: last other client finished -> round ended "
                f"{row['last_other_finish_to_round_end_s']:7.3f} s; failure -> released "
                f"{row['failure_to_release_s']} s (aborted {sorted(row['aborted'])}, "
                f"dropped {sorted(row['dropped'])})",
                file=sys.stderr,
            )
        else:
            warned = (
                f", warning after {row['seconds_to_warning']:.3f} s"
                if row["seconds_to_warning"] is not None else ""
            )
            print(f"  {row['case']}: {row['kind']} after {row['seconds_to_error']:.3f} s"
                  f"{warned}\n      {row['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
