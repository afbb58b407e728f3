"""The client side of the data plane: a connection to one helper.

:class:`HelperClient` sends a client's frames (:mod:`flsplit.runtime.wire`) to the
helper's ``flsplit.Helper`` service (:mod:`flsplit.runtime.dataplane`) and times each
call. Helpers use it too, to relay a chain's tensors to the next hop
(:mod:`flsplit.runtime.relay`).
"""

from __future__ import annotations

import time

import grpc
import torch

from flsplit.runtime import wire

SERVICE = "flsplit.Helper"


class DataPlaneError(RuntimeError):
    """The helper refused or failed a request, or did not answer in time."""


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
    ) -> None:
        self.address = address
        self.client = client
        self.token = token
        self.deadline = deadline
        self.max_frame_bytes = max_frame_bytes
        self.step = 0
        self.last_network_seconds = 0.0
        self.last_service_seconds = 0.0
        self.tls = tls_root_cert is not None
        options = grpc_options(max_frame_bytes)
        if tls_root_cert is not None:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._calls = {
            name: self._channel.unary_unary(f"/{SERVICE}/{name}")
            for name in ("Forward", "Backward", "Finish", "Sync")
        }

    def forward(
        self,
        activation: torch.Tensor,
        step: int | None = None,
        optim: list[list] | None = None,
    ) -> torch.Tensor:
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
        tensor: torch.Tensor | None,
        step: int,
        micro: int = 0,
        micros: int = 1,
    ) -> tuple[torch.Tensor | None, float, float]:
        """One request, safe to issue from several threads at once (micro-batches in
        flight together).

        Parameters
        ----------
        op : {"fwd", "bwd", "finish"}
            What to ask for.
        tensor : torch.Tensor or None
            The activation or gradient (``None`` for ``"finish"``).
        step : int
            The batch counter.
        micro, micros : int
            Micro-batch ``micro`` of ``micros`` in the batch.

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
        return self._request(_METHODS[op], op, tensor, step, micro, micros)

    def backward(
        self, grad_output: torch.Tensor, optim: list[list] | None = None
    ) -> torch.Tensor:
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

    def connect(self) -> None:
        """Wait until the helper's data plane accepts the connection (within the deadline).

        A client calls it before it starts its clock, so the time a helper takes to come
        up counts as a late start, not as the first batch's network time.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.deadline)
        except grpc.FutureTimeoutError:
            raise DataPlaneError(
                f"helper {self.address} did not accept a connection within {self.deadline:.0f} s"
            ) from None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        op: str,
        tensor: torch.Tensor | None,
        optim: list[list] | None = None,
    ) -> torch.Tensor | None:
        result, network, service = self._request(method, op, tensor, self.step, optim=optim)
        self.last_network_seconds, self.last_service_seconds = network, service
        return result

    def _request(
        self,
        method: str,
        op: str,
        tensor: torch.Tensor | None,
        step: int,
        micro: int = 0,
        micros: int = 1,
        optim: list[list] | None = None,
    ) -> tuple[torch.Tensor | None, float, float]:
        request = wire.encode(
            wire.Frame(
                op, self.client, self.token, step, tensor, micro=micro, micros=micros,
                optim=optim,
            )
        )
        start = time.perf_counter()
        try:
            reply = self._calls[method](request, timeout=self.deadline, wait_for_ready=True)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            details = err.details() if hasattr(err, "details") else str(err)
            hint = ""
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                hint = (
                    f" (no working connection to the helper over "
                    f"{'TLS' if self.tls else 'plaintext'}: check that it runs and is "
                    "reachable, and that both sides agree on TLS: the helper's "
                    "data-tls-cert/data-tls-key and the client's data-tls-root-cert)"
                )
            raise DataPlaneError(
                f"helper {self.address} answered {method} for client {self.client!r} with "
                f"{code.name if code else 'an error'}: {details}{hint}"
            ) from None
        try:
            frame = wire.decode(reply, max_frame_bytes=self.max_frame_bytes)
        except wire.FrameError as err:
            raise DataPlaneError(
                f"helper {self.address} sent a bad {method} reply: {err}"
            ) from None
        total = time.perf_counter() - start
        service = min(frame.service_ms / 1000.0, total)
        if frame.op != "result":
            raise DataPlaneError(f"helper answered {method} with op {frame.op!r}")
        return frame.tensor, total - service, service


_METHODS = {"fwd": "Forward", "bwd": "Backward", "finish": "Finish", "sync": "Sync"}
