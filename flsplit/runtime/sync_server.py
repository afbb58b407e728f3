"""Synchronous steps, the helper's gRPC server: the data plane's server with a ``Sync``
method and step-aware idle tracking, in front of a
:class:`~flsplit.runtime.sync_helper.SyncWorker` (whose module describes the protocol)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

from flsplit.runtime import wire
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.sync_helper import SyncWorker
from flsplit.runtime.worker import TaskError


class SyncHelperServer(HelperServer):
    """:class:`~flsplit.runtime.dataplane.HelperServer` for synchronous steps.

    Same authentication, frame checks, deadlines and idle dropping; requests go to a
    :class:`SyncWorker` with their step index, and a fourth method, ``Sync``, carries the
    head and tail gradients (``client_parts="shared"``). A client waiting at a barrier is
    never idle; a client idle for ``idle_timeout`` seconds is dropped from the barriers.
    """

    worker: SyncWorker

    def __init__(self, worker: SyncWorker, *args: Any, **kwargs: Any) -> None:
        super().__init__(worker, *args, **kwargs)  # type: ignore[arg-type]
        self._in_flight: dict[str, int] = {}

    def _methods(self) -> list:
        return [*super()._methods(), ("Sync", self.sync)]

    def sync(self, request: bytes, context: object) -> bytes:
        """``Sync``: post the last step's head and tail gradient, fetch the reduced ones."""
        return self._handle(request, context, "sync")  # type: ignore[arg-type]

    def _busy(self, client: str) -> bool:  # called with the lock held
        return self._in_flight.get(client, 0) > 0

    def _submit(self, frame: wire.Frame, op: str) -> Future:
        if frame.optim is not None:
            raise TaskError(
                "synchronous steps (global sampling) step the body on the helper; they "
                "cannot follow a client's own optimizer"
            )
        return self.worker.submit_step(frame.client, op, frame.step, frame.tensor)

    def _serve(self, request: bytes, op: str) -> bytes:
        if op == "sync":
            frame = self._admit(request, op)  # decoding is not service (as in _serve)
            return self._run_task(frame, op, time.perf_counter())
        try:
            return super()._serve(request, op)
        finally:
            if op == "finish":
                self._retire_finished()

    def _retire_finished(self) -> None:
        for client in list(self.finished):
            if client not in self.worker.retired:
                self.worker.retire(client)

    def _run_task(self, frame: wire.Frame, op: str, received: float) -> bytes:
        with self._lock:  # a client waiting at a barrier is not idle
            self._in_flight[frame.client] = self._in_flight.get(frame.client, 0) + 1
        try:
            return super()._run_task(frame, op, received)
        finally:
            with self._lock:
                self._in_flight[frame.client] -= 1
                self._last_seen[frame.client] = time.monotonic()
