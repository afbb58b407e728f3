"""gRPC data plane between clients and their helper: the helper's server.

The helper serves unary methods on the service ``flsplit.Helper``: ``Forward``
(cut-1 activations in, body output out), ``Backward`` (cut-2 gradient in, cut-1 gradient
out), ``Finish`` (the client is done for the round), ``Abort`` (the client gives up its
round, with the reason) and ``Watch`` (held open by the client for the round). Requests and
replies are frames of :mod:`flsplit.runtime.wire`; no protobuf code generation and
nothing pickled. The client side is :mod:`flsplit.runtime.helper_client`.

A client that fails mid-round is released at once, without waiting for the idle timeout:
it sends ``Abort`` with the cause (``"ValueError: ..."``) from its error path, and if its
process ends without doing so, its ``Watch`` call ends with its connection. Either way
the helper logs ``client 'X' aborted: <reason>``, frees the client's body state, relays the
abort to the client's next hop (chains), keeps the reason in :attr:`HelperServer.aborted`
(the helper's reply carries it to the server) and ends its round when its other clients
are done. The idle timeout stays for a client that is connected but silent, and for one
that never reaches the helper: the helper then says that it never connected (a TLS
mismatch looks like that from the helper's side: gRPC handles the handshake below
Python, so a failed one reaches no handler).

Every request is checked in this order, and nothing is done for it before it passes:

1. the frame's header and tensor layout (:func:`wire.decode_header`), and the op;
2. the sender: a client the helper was told to serve, presenting its own round token for
   this run, round and helper (:class:`~flsplit.runtime.auth.TokenVerifier`); otherwise
   ``UNAUTHENTICATED``, and one ``WARNING`` log line with the reason;
3. the values (finite) and the tensor's fit to the client's body: shape and dtype of the
   body input, or exactly those of the pending forward output for a gradient
   (:meth:`HelperWorker.check <flsplit.runtime.worker.HelperWorker.check>`).

Compression. A request that names a codec (:mod:`flsplit.runtime.wire`, ``codec``) is
answered with its tensors coded with that codec (error feedback, if asked for, kept per
client, direction and micro-batch, :mod:`flsplit.runtime.codecs`), and a relaying helper
codes what it sends to the next hop with it too: the client's choice holds on every hop.
A coded tensor is decoded (its codec fields and values checked) in step 3, before the
body sees it.

A frame failing 1 or 3 is answered with ``INVALID_ARGUMENT`` naming the field; the helper,
its other clients and the sender's own in-flight batch carry on.

Chains. A client's body may be split over a chain of helpers ``client -> h1 -> h2 -> ...
-> client``. A helper that is not the last of a client's chain is given a
:class:`~flsplit.runtime.helper_client.HelperClient` for the next hop (``next_hops``,
relayed by :mod:`flsplit.runtime.relay`), presenting the client's id and
the client's round token *for the next helper* (the server signs one token per
(client, helper) hop; a helper cannot make tokens another helper accepts). ``Forward``:
the helper runs its piece, relays the output to the next hop and answers with what the
next hop answered (the last helper's output returns along the chain). ``Backward``: the
gradient is checked against the shape and dtype the next hop answered that micro-batch's
forward with, relayed to the next hop first, and the gradient the next hop answers (the
gradient of this helper's output) is checked against this helper's pending output and
back-propagated through its own piece. ``Finish`` is relayed before the client counts as
finished here. Every hop validates and authenticates every frame as above; a failing next
hop is answered with ``FAILED_PRECONDITION`` naming it. A chain carries one tensor per cut:
a cut that several tensors cross (:mod:`flsplit.model.crossing`) is refused on a relaying
helper with ``FAILED_PRECONDITION`` (use ``chain-length = 1`` for such cuts). Every client
call has a deadline. The channel is plaintext unless the helper is given a certificate and key
(``tls_cert``, ``tls_key``) and its clients the root certificate (``tls_root_cert``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path

import grpc
import torch

from flsplit.model.crossing import needs_grad
from flsplit.runtime import codecs, wire
from flsplit.runtime.auth import TokenVerifier
from flsplit.runtime.checks import InputError
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import SERVICE, DataPlaneError, HelperClient, grpc_options
from flsplit.runtime.relay import ChainRelay, RelayError, multi_tensor_chain
from flsplit.runtime.worker import HelperWorker, TaskError

LOG = logging.getLogger("flsplit.dataplane")
KEPT_REASONS = 100  # refusals logged at WARNING and kept in ``refused``, per round


def read_pem(path: str | Path, what: str) -> bytes:
    """Read a PEM file named in a node config.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        The config key that named it, for the error message.

    Raises
    ------
    DataPlaneError
        If the file cannot be read or holds no PEM block.
    """
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as err:
        raise DataPlaneError(f"{what}: cannot read {str(path)!r}: {err.strerror}") from None
    if b"-----BEGIN " not in data:
        raise DataPlaneError(f"{what}: {str(path)!r} is not a PEM file")
    return data


class _StatusError(Exception):
    """Internal: a request answered with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class HelperServer:
    """The helper side of the data plane for one round.

    Parameters
    ----------
    worker : HelperWorker
        Executes the body tasks.
    verifier : TokenVerifier
        Checks the round tokens; its client list is the clients this helper serves.
    address : str
        ``host:port`` to listen on; port 0 picks a free port (see :attr:`port`).
    task_timeout : float
        Longest a request waits for its task to be run, in seconds.
    max_frame_bytes : int
        Largest frame accepted.
    tls_cert, tls_key : bytes, optional
        PEM certificate chain and private key: serve over TLS (both or neither).
    idle_timeout : float, optional
        A client that has not finished and sent no request for this many seconds (since
        its last request, or since the server started) is dropped: its body state is
        freed, its update will not be returned, and the helper stops waiting for it.
        ``None`` waits for every client until :meth:`wait_clients`' timeout.
    next_hops : Mapping[str, HelperClient], optional
        Per client whose chain goes on after this helper: the connection to the next
        helper (see the module docstring).
    link : Emulation, optional
        Emulated link to the next hop of a client that ``links`` leaves out.
    links : Mapping[str, Emulation], optional
        Per client: the emulated link to its next hop (:class:`~flsplit.runtime.relay.
        ChainRelay` says what it charges).
    in_flight : int
        Requests one client may have in flight at once (its micro-batches pipelined);
        sizes the server's thread pool so that every request gets a thread.
    """

    def __init__(
        self,
        worker: HelperWorker,
        verifier: TokenVerifier,
        address: str = "127.0.0.1:0",
        task_timeout: float = 300.0,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        idle_timeout: float | None = None,
        next_hops: Mapping[str, HelperClient] | None = None,
        link: Emulation = NO_EMULATION,
        links: Mapping[str, Emulation] | None = None,
        in_flight: int = 2,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise DataPlaneError("TLS needs both a certificate and its private key")
        self.worker = worker
        self.verifier = verifier
        self.clients = verifier.clients
        self.task_timeout = task_timeout
        self.max_frame_bytes = max_frame_bytes
        self.tls = tls_cert is not None
        self.finished: dict[str, int] = {}
        self.dropped: dict[str, str] = {}  # client -> why it was dropped
        self.aborted: dict[str, str] = {}  # client -> why it gave up (Abort, or Watch ended)
        self.idle_timeout = idle_timeout
        self._last_seen: dict[str, float] = {}
        self._seen: set[str] = set()  # clients that reached the helper (authenticated)
        self._watches: dict[str, threading.Event] = {}
        self._stopping = False
        self.refused: list[str] = []
        self.refused_count = 0
        self.invalid_count = 0
        self._all_done = threading.Event()
        self._lock = threading.Lock()
        self.relay = ChainRelay(next_hops or {}, link, links)
        self.coder = codecs.Feedback()  # codes replies (error feedback per client)
        unknown = sorted(set(self.relay.next_hops) - set(self.clients))
        if unknown:
            raise DataPlaneError(f"next hops given for clients not served here: {unknown[:3]}")
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                # per client: its requests in flight, its Finish and its Watch
                max_workers=(max(in_flight, 1) + 2) * len(self.clients) + 4,
                thread_name_prefix="flsplit-dataplane",
            ),
            options=grpc_options(max_frame_bytes),
        )
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(method)
            for name, method in self._methods()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        try:
            if tls_cert is not None and tls_key is not None:
                credentials = grpc.ssl_server_credentials([(tls_key, tls_cert)])
                self.port = self._server.add_secure_port(address, credentials)
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError as err:
            raise DataPlaneError(f"cannot listen on {address!r}: {err}") from None
        if self.port == 0:
            raise DataPlaneError(f"cannot listen on {address!r}: address in use or invalid")
        self.host = address.rsplit(":", 1)[0]

    def _methods(self) -> list[tuple[str, Callable[[bytes, grpc.ServicerContext], bytes]]]:
        """The RPC methods served (subclasses add their own)."""
        return [
            ("Forward", self.forward),
            ("Backward", self.backward),
            ("Finish", self.finish),
            ("Abort", self.abort),
            ("Watch", self.watch),
        ]

    def _busy(self, client: str) -> bool:
        """Whether ``client`` has a request in progress (never idle then); none here.

        Called with ``self._lock`` held.
        """
        return False

    @property
    def address(self) -> str:
        """The address clients connect to."""
        return f"{self.host}:{self.port}"

    def start(self) -> HelperServer:
        """Start serving."""
        self._server.start()
        now = time.monotonic()
        self._last_seen = dict.fromkeys(self.clients, now)
        if not self.clients:
            self._all_done.set()
        return self

    def wait_clients(self, timeout: float) -> bool:
        """Block until every client called ``Finish``, aborted or was dropped as idle, or
        until ``timeout`` passes; return whether no client is left to wait for."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._all_done.is_set()
            step = left if self.idle_timeout is None else min(left, 0.25)
            if self._all_done.wait(step):
                return True
            if self.idle_timeout is not None:
                self._drop_idle(time.monotonic())

    def _over(self, client: str) -> bool:
        """Whether ``client``'s round here is over (called with ``self._lock`` held)."""
        return client in self.finished or client in self.dropped or client in self.aborted

    def _check_done(self) -> None:
        """Set the round's end once no client is left (called with ``self._lock`` held)."""
        if set(self.finished) | set(self.dropped) | set(self.aborted) >= self.clients:
            self._all_done.set()

    def _drop_idle(self, now: float) -> None:
        with self._lock:
            idle = [
                client
                for client, seen in self._last_seen.items()
                if not self._over(client)
                and now - seen > self.idle_timeout
                and not self._busy(client)
            ]
            never = {client for client in idle if client not in self._seen}
            for client in idle:
                self.dropped[client] = (
                    f"never reached the helper in {self.idle_timeout:.0f} s"
                    if client in never
                    else f"no request for {self.idle_timeout:.0f} s"
                )
                self._wake_watch(client)
            self._check_done()
        for client in idle:
            if client in never:
                LOG.warning(
                    "client %r never reached this helper in %.0f s: dropped. It failed "
                    "before connecting, dials another address than %s, or disagrees on "
                    "TLS: this helper serves %s, so its clients need %s",
                    client,
                    self.idle_timeout,
                    self.address,
                    "TLS" if self.tls else "plaintext",
                    "data-tls-root-cert (the CA of its data-tls-cert)"
                    if self.tls
                    else "no data-tls-root-cert",
                )
            else:
                LOG.warning(
                    "client %r sent nothing for %.0f s: dropped, its update is discarded",
                    client,
                    self.idle_timeout,
                )
            self.worker.drop(client)
            if self.relay.relays(client):
                self.relay.abort(client, f"dropped by the previous helper: {self.dropped[client]}")

    def _wake_watch(self, client: str) -> None:
        """End ``client``'s ``Watch`` call, if any (called with ``self._lock`` held)."""
        watch = self._watches.get(client)
        if watch is not None:
            watch.set()

    def release(self, client: str, reason: str) -> bool:
        """Give up waiting for ``client`` this round: it aborted (``reason``: why).

        Its body state is freed, its update will not be returned, its next hop (chains)
        is told, and the round ends when the other clients are done. Returns whether the
        client was still in the round (``False``: it had finished or was already gone).
        """
        with self._lock:
            if client not in self.clients or self._over(client):
                return False
            self.aborted[client] = reason
            self._wake_watch(client)
            self._check_done()
        LOG.warning("client %r aborted: %s", client, reason)
        self.worker.drop(client)
        if self.relay.relays(client):
            self.relay.abort(client, reason)
        return True

    def stop(self, grace: float = 1.0) -> None:
        """Stop the server, the worker and the connections to next hops."""
        with self._lock:
            self._stopping = True
            for watch in self._watches.values():
                watch.set()
        self._server.stop(grace).wait()
        self.worker.stop()
        self.relay.close()

    # -- handlers (gRPC calls them with the raw request bytes) --------------------------

    def forward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """``Forward``: cut-1 activations in, body output out."""
        return self._handle(request, context, "fwd")

    def backward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """``Backward``: cut-2 gradient in, cut-1 gradient out."""
        return self._handle(request, context, "bwd")

    def finish(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """``Finish``: the client is done for the round."""
        return self._handle(request, context, "finish")

    def abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """``Abort``: the client gives up its round (the frame's ``reason`` says why)."""
        return self._handle(request, context, "abort")

    def watch(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """``Watch``: held open by the client until its round here is over; if it ends
        first (the client's connection closed), the client is released as aborted."""
        try:
            frame = self._admit(request, "watch", over_ok=True)
        except _StatusError as error:
            context.abort(error.code, error.details)
            raise  # abort raises; this is never reached with a real context
        client = frame.client
        ended = threading.Event()
        with self._lock:
            if client in self._watches:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"client {client!r} is watched")
            if self._stopping or self._over(client):
                return wire.encode(wire.Frame("result", client, step=frame.step))
            self._watches[client] = ended
        try:
            if not context.add_callback(ended.set):  # the call already ended
                ended.set()
            ended.wait()
        finally:
            with self._lock:
                self._watches.pop(client, None)
                gone = not self._stopping and not self._over(client)
        if gone:
            self.release(
                client,
                "its connection closed before it finished (its process ended or it closed "
                "the channel)",
            )
        return wire.encode(wire.Frame("result", client, step=frame.step))

    def _handle(self, request: bytes, context: grpc.ServicerContext, op: str) -> bytes:
        try:
            return self._serve(request, op)
        except _StatusError as error:
            context.abort(error.code, error.details)
            raise  # abort raises; this is never reached with a real context

    def _invalid(self, details: str) -> _StatusError:
        with self._lock:
            self.invalid_count += 1
        LOG.info("invalid request: %s", details)
        return _StatusError(grpc.StatusCode.INVALID_ARGUMENT, details)

    def _admit(self, request: bytes, op: str, over_ok: bool = False) -> wire.Frame:
        """Decode, authenticate and check a request (the module docstring's order).

        ``over_ok``: also admit a client whose round here is over (``Abort``, ``Watch``).
        """
        try:
            raw = wire.decode_header(request, max_frame_bytes=self.max_frame_bytes)
        except wire.FrameError as err:
            raise self._invalid(f"bad frame: {err}") from None
        frame = raw.frame
        if frame.op != op:
            raise self._invalid(f"bad frame: op {frame.op!r} sent to {op!r}")
        reason = self.verifier.check(frame.client, frame.token)
        if reason is not None:
            with self._lock:
                self.refused_count += 1
                count = self.refused_count
                if count <= KEPT_REASONS:
                    self.refused.append(reason)
            if count <= KEPT_REASONS:
                LOG.warning("refused request: %s", reason)
            else:  # a flood: keep the log readable
                if count == KEPT_REASONS + 1:
                    LOG.warning("more than %d refused requests this round", KEPT_REASONS)
                LOG.debug("refused request: %s", reason)
            raise _StatusError(grpc.StatusCode.UNAUTHENTICATED, reason)
        with self._lock:
            self._seen.add(frame.client)
        if over_ok:
            return frame
        if frame.client in self.finished:
            raise _StatusError(
                grpc.StatusCode.FAILED_PRECONDITION, f"client {frame.client!r} finished"
            )
        if frame.client in self.dropped:
            raise _StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"client {frame.client!r} was dropped this round: {self.dropped[frame.client]}",
            )
        if frame.client in self.aborted:
            raise _StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"client {frame.client!r} aborted this round: {self.aborted[frame.client]}",
            )
        with self._lock:
            self._last_seen[frame.client] = time.monotonic()
        try:
            frame.tensor = raw.tensor(require_finite=True)
        except wire.FrameError as err:
            raise self._invalid(f"bad frame: {err}") from None
        return frame

    def _serve(self, request: bytes, op: str) -> bytes:
        received = time.perf_counter()
        if op == "abort":
            frame = self._admit(request, op, over_ok=True)
            self.release(frame.client, frame.reason or "no reason given")
            return wire.encode(wire.Frame("result", frame.client, step=frame.step))
        frame = self._admit(request, op)
        # the service time a client is told is the queue and compute: decoding the request
        # (in _admit) and coding the reply are the data plane's, which the client counts
        # as network time, as it counts its own coding (the planner's stages hold them)
        received = time.perf_counter()
        if frame.optim is not None and self.relay.relays(frame.client):
            raise _StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "a chain of helpers cannot follow the client's own optimizer; train with "
                "flsplit's own loop (no train_fn) or without chains",
            )
        if op == "finish":
            if frame.optim:  # the client's last optimizer step rides on its finish
                self._run_task(frame, "optim", received)
            relay_error = None
            if self.relay.relays(frame.client):
                try:
                    self.relay.finish(frame.client, frame.step)
                except RelayError as err:
                    relay_error = _StatusError(grpc.StatusCode.FAILED_PRECONDITION, str(err))
            with self._lock:
                if frame.client in self.aborted or frame.client in self.dropped:
                    raise _StatusError(  # released while its finish was relayed
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"client {frame.client!r} left this round before it finished",
                    )
                self.finished[frame.client] = frame.step
                self._wake_watch(frame.client)
                self._check_done()
            if relay_error is not None:
                raise relay_error
            return wire.encode(wire.Frame("result", frame.client, step=frame.step))
        if frame.tensor is None:
            raise self._invalid(f"bad frame: {op} frame carries no tensor")
        if isinstance(frame.tensor, tuple) and self.relay.relays(frame.client):
            raise _StatusError(
                grpc.StatusCode.FAILED_PRECONDITION, multi_tensor_chain(frame.tensor)
            )
        return self._run_task(frame, op, received)

    def _submit(self, frame: wire.Frame, op: str) -> futures.Future:
        """Queue the frame's task on the worker."""
        return self.worker.submit(
            frame.client, op, frame.tensor, frame.micro, frame.micros, frame.optim, frame.grads
        )

    def _run_task(self, frame: wire.Frame, op: str, received: float) -> bytes:
        """Submit the frame's task (a chain's gradient goes to the next hop first), wait
        for it, pass a chain's forward output on, and encode the reply."""
        relayed = self.relay.relays(frame.client)
        try:
            if op == "bwd" and relayed:
                frame.tensor = self.relay.backward(
                    frame.client, frame.tensor, frame.step, frame.micro, frame.micros,
                    codec=frame.codec,
                )
            future = self._submit(frame, op)
        except InputError as err:
            raise self._invalid(f"bad {op} input: {err}") from None
        except TaskError as err:
            raise _StatusError(grpc.StatusCode.FAILED_PRECONDITION, str(err)) from None
        try:
            result = future.result(timeout=self.task_timeout)
        except TaskError as err:
            raise _StatusError(grpc.StatusCode.FAILED_PRECONDITION, str(err)) from None
        except futures.TimeoutError:
            raise _StatusError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{op} task not run in time"
            ) from None
        except Exception as err:  # the body refused the client's input
            raise self._invalid(f"{op} failed: {str(err)[:300]}") from None
        if op == "fwd" and relayed:
            try:
                result = self.relay.forward(
                    frame.client, result, frame.step, frame.micro, frame.micros,
                    codec=frame.codec,
                )
            except RelayError as err:
                raise _StatusError(grpc.StatusCode.FAILED_PRECONDITION, str(err)) from None
        service_ms = (time.perf_counter() - received) * 1000.0
        grads = None
        if frame.codec is not None and not frame.codec.lossless and result is not None:
            if not isinstance(result, torch.Tensor):
                grads = needs_grad(result)  # as the wire flags them raw
            result = self.coder.code_all(
                result, frame.codec, (frame.client, op, frame.micro),
                grads if op == "fwd" else None,
            )
        return wire.encode(
            wire.Frame(
                "result",
                frame.client,
                step=frame.step,
                tensor=result,
                service_ms=service_ms,
                micro=frame.micro,
                micros=frame.micros,
                grads=grads,
            )
        )
