"""The client side of the data plane: a connection to one helper.

:class:`HelperClient` sends a client's frames (:mod:`flsplit.runtime.wire`) to the
helper's ``flsplit.Helper`` service (:mod:`flsplit.runtime.dataplane`) and times each
call. Helpers use it too, to relay a chain's tensors to the next hop
(:mod:`flsplit.runtime.relay`).

Connecting. :meth:`HelperClient.connect` (called before the first request if the caller
did not) waits for the channel to become ready. When gRPC reports the connection failing,
:func:`~flsplit.runtime.diagnose.probe` finds out why: a TLS mismatch (and which side has
TLS), a certificate that does not verify or does not name the helper, or a port that
speaks something else fail at once with :class:`HelperConnectionError`, naming the cause and
the node-config keys that fix it. A refused connection, no answer or a host name that does
not resolve are waited out (the helper may still be starting) with one warning after
:data:`WARN_AFTER` seconds, and fail with the same diagnosis at the deadline. Once
connected, a request fails at once if the connection is lost (no waiting for the helper to
come back: a restarted helper has lost the round), its message naming what a probe finds.

Several tensors. A request may carry a tuple of tensors (a cut that several values cross,
:mod:`flsplit.model.crossing`); each is flagged as needing a gradient when it is floating
point and requires one (pass the head's output as it is; it is detached for the wire). A
tuple answered by the helper comes back with the flagged tensors requiring a gradient
(fresh leaves), the others not.

Compression. A client given codecs (``codecs``: activations, gradients; run config
``compress-activations``, ``compress-gradients``) codes the floating-point tensors of its
``fwd`` requests with the first and of its ``bwd`` requests with the second
(:mod:`flsplit.runtime.codecs`, error feedback per direction and micro-batch), names the
codec in the frame so the helper answers in kind, and counts the bytes it sends and
receives (:attr:`HelperClient.bytes_up`, :attr:`HelperClient.bytes_down`).

The end of a round. :meth:`HelperClient.finish` tells the helper the client is done. A
client whose round fails sends ``Abort`` with the cause instead (the context manager does
so on an exception), so the helper releases it at once; and after its first answered
request the client holds a ``Watch`` call open, so that the helper sees the connection
close if the client's process ends without either.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import torch

from flsplit.config import CodecSetting
from flsplit.model.crossing import Activation, detach_inputs, needs_grad
from flsplit.runtime import codecs as _codecs
from flsplit.runtime import diagnose, wire

SERVICE = "flsplit.Helper"
LOG = logging.getLogger("flsplit.dataplane")
#: Seconds of a connection failing (refused, no answer) before the client warns.
WARN_AFTER = 3.0
#: Seconds between probes of a port while the connection keeps failing.
PROBE_INTERVAL = 1.0
#: Seconds a connection may stay "connecting" before the port is probed.
SLOW_CONNECT = 2.0
#: Longest an ``Abort`` may take (the client's error path waits for it).
ABORT_TIMEOUT = 5.0


class DataPlaneError(RuntimeError):
    """The helper refused or failed a request, or did not answer in time."""


class HelperConnectionError(DataPlaneError):
    """No connection to the helper; ``kind`` says why (a kind of
    :mod:`flsplit.runtime.diagnose`: ``"refused"``, ``"tls-wrong-root"``, ...)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def grpc_options(max_frame_bytes: int) -> list[tuple[str, int | str]]:
    """gRPC channel and server options for frames of up to ``max_frame_bytes``.

    Parameters
    ----------
    max_frame_bytes : int
        Largest frame either side accepts.

    Returns
    -------
    list of (str, int or str)
        Message-length limits for ``grpc.server`` and ``grpc.*_channel``.
    """
    # A little headroom over the frame limit so that an oversized frame reaches the
    # helper's own check, which names the field; far larger messages gRPC drops itself.
    limit = min(max_frame_bytes + 64 * 1024, 2**31 - 1)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]


class HelperClient:
    """The client side of the data plane.

    Parameters
    ----------
    address : str
        The helper's ``host:port``.
    client : str
        This client's id.
    token : str
        The round token from the server.
    deadline : float
        Seconds every call may take, including waiting for the helper to come up.
    max_frame_bytes : int
        Largest frame sent or received.
    tls_root_cert : bytes, optional
        PEM root certificate(s) to check the helper's certificate against: connect over
        TLS. Without it the channel is plaintext.
    tls_server_name : str, optional
        Name to expect in the helper's certificate when it differs from the host in
        ``address``.
    codecs : (CodecSetting, CodecSetting), optional
        Codecs of the activations (``fwd``) and gradients (``bwd``) this client sends and
        asks the helper to answer with; default: raw tensors.
    """

    def __init__(
        self,
        address: str,
        client: str,
        token: str,
        deadline: float = 120.0,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
        tls_root_cert: bytes | None = None,
        tls_server_name: str | None = None,
        codecs: tuple[CodecSetting, CodecSetting] | None = None,
    ) -> None:
        self.address = address
        self.codecs = {"fwd": codecs[0], "bwd": codecs[1]} if codecs else {}
        self._coder = _codecs.Feedback()
        #: bytes of every frame sent and received (requests and replies), this connection
        self.bytes_up = self.bytes_down = 0
        self._bytes_lock = threading.Lock()
        self.client = client
        self.token = token
        self.deadline = deadline
        self.max_frame_bytes = max_frame_bytes
        self.step = 0
        self.last_network_seconds = 0.0
        self.last_service_seconds = 0.0
        self.tls = tls_root_cert is not None
        self._root_cert, self._server_name = tls_root_cert, tls_server_name
        self._connected = False
        self._connect_lock = threading.Lock()
        self._broken: HelperConnectionError | None = None
        self._finished = self._aborted = False
        self._watch: grpc.Future | None = None
        options = grpc_options(max_frame_bytes)
        # a helper that comes up while the client waits is found within about a second
        options += [("grpc.initial_reconnect_backoff_ms", 250),
                    ("grpc.max_reconnect_backoff_ms", 1000)]
        if tls_root_cert is not None:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._calls = {
            name: self._channel.unary_unary(f"/{SERVICE}/{name}")
            for name in ("Forward", "Backward", "Finish", "Sync", "Abort", "Watch")
        }

    def forward(
        self,
        activation: Activation,
        step: int | None = None,
        optim: list[list] | None = None,
    ) -> Activation:
        """Send cut-1 activations; return the body output.

        ``step`` names the global step in synchronous-step mode; by default the client's
        own batch counter goes up by one. ``optim``: the client's optimizer events since
        its last frame (its own training loop; see :mod:`flsplit.runtime.wire`).
        """
        self.step = self.step + 1 if step is None else int(step)
        return self._call("Forward", "fwd", activation, optim)

    def call(
        self,
        op: str,
        tensor: Activation | None,
        step: int,
        micro: int = 0,
        micros: int = 1,
        codec: CodecSetting | None = None,
    ) -> tuple[Activation | None, float, float]:
        """One request, safe to issue from several threads at once (micro-batches in
        flight together).

        Parameters
        ----------
        op : {"fwd", "bwd", "finish"}
            What to ask for.
        tensor : Activation or None
            The activation or gradients (``None`` for ``"finish"``).
        step : int
            The batch counter.
        micro, micros : int
            Micro-batch ``micro`` of ``micros`` in the batch.
        codec : CodecSetting, optional
            The codec of this request (a relaying helper passes on its client's); default:
            this connection's codec of ``op``.

        Returns
        -------
        tuple
            The answered tensor, the call's network seconds and the helper's service
            seconds.

        Raises
        ------
        DataPlaneError
            If the helper refused or failed the request, or did not answer in time.
        """
        return self._request(_METHODS[op], op, tensor, step, micro, micros, codec=codec)

    def codec_of(self, op: str) -> CodecSetting:
        """The codec of this connection's ``op`` requests (``"fwd"``, ``"bwd"``) and their
        answers."""
        return self.codecs.get(op, _codecs.NONE)

    def wire_nbytes(self, op: str, tensor: Activation) -> int:
        """Payload bytes of ``tensor`` in an ``op`` request or its answer: what an emulated
        link charges for it."""
        return _codecs.wire_nbytes(tensor, self.codec_of(op))

    def backward(
        self, grad_output: Activation, optim: list[list] | None = None
    ) -> Activation:
        """Send the gradient at cut 2 (of the last forward's step); return the gradient
        at cut 1. With ``optim`` (even empty) the helper only accumulates the gradient: the
        client's optimizer events step its body."""
        return self._call("Backward", "bwd", grad_output, optim)

    def sync(self, step: int, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """Synchronous-step mode: post this client's head and tail gradient of its last
        step (if any) and fetch the helper's reduced gradients of every step before
        ``step`` not fetched yet (see :mod:`flsplit.runtime.sync_helper`)."""
        self.step = int(step)
        result = self._call("Sync", "sync", tensor)
        if result is None:
            raise DataPlaneError(f"helper {self.address} answered Sync without a tensor")
        return result

    def finish(self, optim: list[list] | None = None) -> None:
        """Tell the helper this client is done for the round (after applying ``optim``,
        the client's last optimizer events)."""
        self._call("Finish", "finish", None, optim)
        self._finished = True

    def abort(self, reason: str) -> bool:
        """Tell the helper this client gives up its round, and why (best effort: never
        raises; at most :data:`ABORT_TIMEOUT` seconds).

        The helper releases the client at once: its body state is freed and the helper's
        round ends when its other clients finish. Nothing is sent after :meth:`finish`,
        a first ``abort``, or a connection that failed.

        Parameters
        ----------
        reason : str
            The cause, e.g. ``"ValueError: bad batch"`` (:func:`wire.short_reason`);
            cut to :data:`wire.MAX_REASON_CHARS` printable characters.

        Returns
        -------
        bool
            Whether the helper took the abort.
        """
        if self._finished or self._aborted or self._broken is not None:
            return False
        self._aborted = True
        safe = "".join(c if c.isprintable() else "?" for c in reason)[: wire.MAX_REASON_CHARS]
        request = wire.encode(
            wire.Frame("abort", self.client, self.token, self.step, reason=safe)
        )
        try:  # before any connection the helper may still be starting: wait for it
            self._calls["Abort"](
                request, timeout=min(self.deadline, ABORT_TIMEOUT),
                wait_for_ready=not self._connected,
            )
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            LOG.warning(
                "client %r could not tell helper %s that it aborts (%s): the helper drops "
                "it after its client-idle-timeout", self.client, self.address,
                code.name if code else err,
            )
            return False
        return True

    def connect(self) -> None:
        """Wait until the helper's data plane accepts the connection (within the deadline).

        A client calls it before it starts its clock, so the time a helper takes to come
        up counts as a late start, not as the first batch's network time. Requests call
        it themselves if the caller did not.

        Raises
        ------
        HelperConnectionError
            At once for a TLS mismatch, a certificate that does not verify or does not name
            the helper, or a port that speaks something else; at the deadline if the
            connection is still refused, unanswered or failing. The message names the cause
            (see the module docstring).
        """
        if self._connected:
            return
        with self._connect_lock:
            if self._connected:
                return
            if self._broken is not None:
                raise self._broken
            try:
                self._wait_ready()
            except HelperConnectionError as err:
                self._broken = err
                raise
            self._connected = True

    def _wait_ready(self) -> None:
        """Block until the channel is READY; raise :class:`HelperConnectionError` with the
        probe's diagnosis when it cannot become so."""
        cond = threading.Condition()
        seen = {"state": None, "failures": 0, "connecting": time.monotonic()}

        def on_state(state: grpc.ChannelConnectivity) -> None:
            with cond:
                if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    seen["failures"] += 1
                if state is grpc.ChannelConnectivity.CONNECTING and seen["state"] is not state:
                    seen["connecting"] = time.monotonic()
                seen["state"] = state
                cond.notify_all()

        start = time.monotonic()
        deadline = start + self.deadline
        diagnosis: diagnose.Diagnosis | None = None
        probed_at, probed_failures, warned = float("-inf"), 0, False
        self._channel.subscribe(on_state, try_to_connect=True)
        try:
            while True:
                with cond:
                    now = time.monotonic()
                    state = seen["state"]
                    if state is grpc.ChannelConnectivity.READY:
                        return
                    if now >= deadline:
                        break
                    failing = (
                        state is grpc.ChannelConnectivity.TRANSIENT_FAILURE
                        or seen["failures"] > probed_failures
                        or (state is grpc.ChannelConnectivity.CONNECTING
                            and now - seen["connecting"] > SLOW_CONNECT)
                    )
                    if not failing or now - probed_at < PROBE_INTERVAL:
                        cond.wait(min(deadline - now, 0.1 if failing else 0.5))
                        probe_now = False
                    else:
                        probed_failures = seen["failures"]
                        probe_now = True
                if probe_now:
                    probed_at = time.monotonic()
                    diagnosis = self._probe(timeout=min(2.0, max(deadline - probed_at, 0.1)))
                    if diagnosis.fatal:
                        raise HelperConnectionError(
                            f"helper {self.address}: {diagnosis.message}", diagnosis.kind
                        )
                now = time.monotonic()
                if (
                    not warned
                    and diagnosis is not None
                    and diagnosis.kind != diagnose.OK
                    and now - start >= WARN_AFTER
                    and now < deadline
                ):
                    warned = True
                    LOG.warning(
                        "client %r: helper %s: %s; waiting up to %.0f s more for it",
                        self.client, self.address, diagnosis.message, deadline - now,
                    )
        finally:
            self._channel.unsubscribe(on_state)
        if diagnosis is None or diagnosis.kind == diagnose.OK:
            diagnosis = self._probe(timeout=1.0)
        why = diagnosis.message or (
            f"its port answers, but no gRPC connection could be made "
            f"({'TLS' if self.tls else 'plaintext'})"
        )
        raise HelperConnectionError(
            f"helper {self.address} did not accept a connection within "
            f"{self.deadline:.0f} s: {why}",
            diagnosis.kind if diagnosis.kind != diagnose.OK else diagnose.TIMEOUT,
        )

    def _probe(self, timeout: float) -> diagnose.Diagnosis:
        """Look at the helper's port as this client reaches it."""
        return diagnose.probe(self.address, self._root_cert, self._server_name, timeout)

    def _start_watch(self) -> None:
        """Hold a ``Watch`` call open for the round: the helper sees it end if this
        client's connection closes before it finished (its process ended)."""
        request = wire.encode(wire.Frame("watch", self.client, self.token, self.step))
        try:
            self._watch = self._calls["Watch"].future(request, wait_for_ready=False)
        except (grpc.RpcError, ValueError):  # a closed channel
            self._watch = None

    def close(self) -> None:
        """Close the channel (which ends the ``Watch`` call)."""
        self._channel.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        """Close the channel; on an exception first tell the helper (:meth:`abort`)."""
        try:
            if exc is not None and not self._finished:
                self.abort(wire.short_reason(exc))
        finally:
            self.close()

    def _call(
        self,
        method: str,
        op: str,
        tensor: Activation | None,
        optim: list[list] | None = None,
    ) -> Activation | None:
        result, network, service = self._request(method, op, tensor, self.step, optim=optim)
        self.last_network_seconds, self.last_service_seconds = network, service
        return result

    def _request(
        self,
        method: str,
        op: str,
        tensor: Activation | None,
        step: int,
        micro: int = 0,
        micros: int = 1,
        optim: list[list] | None = None,
        codec: CodecSetting | None = None,
    ) -> tuple[Activation | None, float, float]:
        codec = codec if codec is not None else self.codec_of(op)
        self.connect()
        # the clock starts before the tensor is coded and framed: coding is part of
        # sending it, so it counts to the call's network time (the stages the planner
        # learns), not to nothing
        start = time.perf_counter()
        grads = None
        if tensor is not None and not codec.lossless:
            if not isinstance(tensor, torch.Tensor):
                grads = needs_grad(tensor)  # as the wire flags them raw
            # a forward codes the tensors that take a gradient (hidden states; masks, ids
            # and tables travel raw), a backward every gradient
            which = grads if op == "fwd" else None
            tensor = self._coder.code_all(tensor, codec, (op, micro), which)
        request = wire.encode(
            wire.Frame(
                op, self.client, self.token, step, tensor, micro=micro, micros=micros,
                optim=optim, grads=grads, codec=None if codec.lossless else codec,
            )
        )
        try:  # connected: a lost connection fails now rather than at the deadline
            reply = self._calls[method](request, timeout=self.deadline, wait_for_ready=False)
        except grpc.RpcError as err:
            raise self._request_error(method, err) from None
        try:
            frame = wire.decode(reply, max_frame_bytes=self.max_frame_bytes)
        except wire.FrameError as err:
            raise DataPlaneError(
                f"helper {self.address} sent a bad {method} reply: {err}"
            ) from None
        total = time.perf_counter() - start
        with self._bytes_lock:
            self.bytes_up += len(request)
            self.bytes_down += len(reply)
        if self._watch is None and op != "finish":  # the helper accepted this client
            with self._connect_lock:
                if self._watch is None:
                    self._start_watch()
        service = min(frame.service_ms / 1000.0, total)
        if frame.op != "result":
            raise DataPlaneError(f"helper answered {method} with op {frame.op!r}")
        answer = frame.tensor
        if isinstance(answer, tuple):  # the tensors that need a gradient require one
            answer = detach_inputs(answer, frame.grads)
        return answer, total - service, service

    def _request_error(self, method: str, err: grpc.RpcError) -> DataPlaneError:
        """The error a failed request raises: the status and, for a lost connection,
        what a probe of the helper's port finds."""
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        message = (
            f"helper {self.address} answered {method} for client {self.client!r} with "
            f"{code.name if code else 'an error'}: {details}"
        )
        if code is grpc.StatusCode.UNAVAILABLE:
            diagnosis = self._probe(timeout=2.0)
            if diagnosis.kind == diagnose.REFUSED:
                failure = HelperConnectionError(
                    f"{message} (the helper stopped serving: {diagnosis.message}; it "
                    "ended its round, e.g. at its round-timeout, or it crashed)",
                    diagnosis.kind,
                )
            elif diagnosis.kind != diagnose.OK:
                failure = HelperConnectionError(f"{message} ({diagnosis.message})", diagnosis.kind)
            else:
                failure = HelperConnectionError(
                    f"{message} (the connection to the helper broke; its port still answers)",
                    "broken",
                )
            self._broken = failure
            return failure
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            message += f" (no answer within the call deadline of {self.deadline:.0f} s)"
        return DataPlaneError(message)


def link_nbytes(helper: object, op: str, tensor: Activation) -> int:
    """Payload bytes of ``tensor`` in an ``op`` request to ``helper`` or its answer (coded
    with the connection's codec; raw for a stand-in without codecs): what an emulated
    link charges for it."""
    measure = getattr(helper, "wire_nbytes", None)
    if measure is None:
        return sum(t.numel() * t.element_size() for t in
                   ((tensor,) if isinstance(tensor, torch.Tensor) else tensor))
    return int(measure(op, tensor))


_METHODS = {"fwd": "Forward", "bwd": "Backward", "finish": "Finish", "sync": "Sync"}
