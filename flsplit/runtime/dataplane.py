"""gRPC data plane between clients and their helper.

The helper serves three unary methods on the service ``flsplit.Helper``: ``Forward``
(cut-1 activations in, body output out), ``Backward`` (cut-2 gradient in, cut-1 gradient
out) and ``Finish`` (the client is done for the round). Requests and replies are frames of
:mod:`flsplit.runtime.wire`; no protobuf code generation and nothing pickled.

Every request carries the client's id and its round token; the helper refuses any client
it was not told to serve and any token that does not match, with ``UNAUTHENTICATED``. A
malformed frame is answered with ``INVALID_ARGUMENT`` naming the problem; the helper and
its other clients carry on. Every client call has a deadline.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Mapping
from concurrent import futures

import grpc
import torch

from flsplit.runtime import wire
from flsplit.runtime.worker import HelperWorker, TaskError

SERVICE = "flsplit.Helper"
LOG = logging.getLogger("flsplit.dataplane")


class DataPlaneError(RuntimeError):
    """The helper refused or failed a request, or did not answer in time."""


def _grpc_options(max_frame_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_frame_bytes),
        ("grpc.max_send_message_length", max_frame_bytes),
    ]


class HelperServer:
    """The helper side of the data plane for one round.

    Parameters
    ----------
    worker : HelperWorker
        Executes the body tasks.
    tokens : Mapping[str, str]
        Round token of every client the helper serves.
    address : str
        ``host:port`` to listen on; port 0 picks a free port (see :attr:`port`).
    task_timeout : float
        Longest a request waits for its task to be run, in seconds.
    max_frame_bytes : int
        Largest frame accepted.
    """

    def __init__(
        self,
        worker: HelperWorker,
        tokens: Mapping[str, str],
        address: str = "127.0.0.1:0",
        task_timeout: float = 300.0,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.worker = worker
        self.tokens = dict(tokens)
        self.task_timeout = task_timeout
        self.max_frame_bytes = max_frame_bytes
        self.finished: dict[str, int] = {}
        self.refused: list[str] = []
        self._all_done = threading.Event()
        self._lock = threading.Lock()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=2 * len(self.tokens) + 4, thread_name_prefix="flsplit-dataplane"
            ),
            options=_grpc_options(max_frame_bytes),
        )
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(method)
            for name, method in (
                ("Forward", self._forward),
                ("Backward", self._backward),
                ("Finish", self._finish),
            )
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise DataPlaneError(f"cannot listen on {address!r}: address in use or invalid")
        self.host = address.rsplit(":", 1)[0]

    @property
    def address(self) -> str:
        """The address clients connect to."""
        return f"{self.host}:{self.port}"

    def start(self) -> HelperServer:
        """Start serving."""
        self._server.start()
        if not self.tokens:
            self._all_done.set()
        return self

    def wait_clients(self, timeout: float) -> bool:
        """Block until every client called ``Finish`` or ``timeout`` passes."""
        return self._all_done.wait(timeout)

    def stop(self, grace: float = 1.0) -> None:
        """Stop the server and the worker."""
        self._server.stop(grace).wait()
        self.worker.stop()

    # -- handlers ---------------------------------------------------------------------

    def _admit(self, request: bytes, context: grpc.ServicerContext, op: str) -> wire.Frame:
        try:
            frame = wire.decode(request, max_frame_bytes=self.max_frame_bytes)
        except wire.FrameError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad frame: {err}")
        if frame.op != op:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"op {frame.op!r} sent to {op!r}")
        expected = self.tokens.get(frame.client)
        if expected is None or not hmac.compare_digest(expected, frame.token):
            reason = (
                f"client {frame.client!r} is not served by this helper this round"
                if expected is None
                else f"wrong round token for client {frame.client!r}"
            )
            with self._lock:
                self.refused.append(reason)
            LOG.warning("refused request: %s", reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        if frame.client in self.finished:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"client {frame.client!r} finished")
        return frame

    def _run_task(self, request: bytes, context: grpc.ServicerContext, kind: str) -> bytes:
        received = time.perf_counter()
        frame = self._admit(request, context, kind)
        if frame.tensor is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{kind} frame carries no tensor")
        try:
            result = self.worker.submit(frame.client, kind, frame.tensor).result(
                timeout=self.task_timeout
            )
        except TaskError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except futures.TimeoutError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{kind} task not run in time")
        except Exception as err:  # the client's own bad input, e.g. a wrong shape
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{kind} failed: {err}")
        service_ms = (time.perf_counter() - received) * 1000.0
        return wire.encode(
            wire.Frame(
                "result", frame.client, step=frame.step, tensor=result, service_ms=service_ms
            )
        )

    def _forward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._run_task(request, context, "fwd")

    def _backward(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._run_task(request, context, "bwd")

    def _finish(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        frame = self._admit(request, context, "finish")
        with self._lock:
            self.finished[frame.client] = frame.step
            if set(self.finished) >= set(self.tokens):
                self._all_done.set()
        return wire.encode(wire.Frame("result", frame.client, step=frame.step))


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
    """

    def __init__(
        self,
        address: str,
        client: str,
        token: str,
        deadline: float = 120.0,
        max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.address = address
        self.client = client
        self.token = token
        self.deadline = deadline
        self.max_frame_bytes = max_frame_bytes
        self.step = 0
        self.last_network_seconds = 0.0
        self.last_service_seconds = 0.0
        self._channel = grpc.insecure_channel(address, options=_grpc_options(max_frame_bytes))
        self._calls = {
            name: self._channel.unary_unary(f"/{SERVICE}/{name}")
            for name in ("Forward", "Backward", "Finish")
        }

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        """Send cut-1 activations; return the body output."""
        self.step += 1
        return self._call("Forward", "fwd", activation)

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        """Send the gradient at cut 2; return the gradient at cut 1."""
        return self._call("Backward", "bwd", grad_output)

    def finish(self) -> None:
        """Tell the helper this client is done for the round."""
        self._call("Finish", "finish", None)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, op: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        request = wire.encode(wire.Frame(op, self.client, self.token, self.step, tensor))
        start = time.perf_counter()
        try:
            reply = self._calls[method](request, timeout=self.deadline, wait_for_ready=True)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            details = err.details() if hasattr(err, "details") else str(err)
            raise DataPlaneError(
                f"helper {self.address} answered {method} for client {self.client!r} with "
                f"{code.name if code else 'an error'}: {details}"
            ) from None
        frame = wire.decode(reply, max_frame_bytes=self.max_frame_bytes)
        total = time.perf_counter() - start
        self.last_service_seconds = min(frame.service_ms / 1000.0, total)
        self.last_network_seconds = total - self.last_service_seconds
        if frame.op != "result":
            raise DataPlaneError(f"helper answered {method} with op {frame.op!r}")
        return frame.tensor
