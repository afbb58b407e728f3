"""Synchronous steps, helper side: step barriers, one shared body, gradient reductions.

The client side is :mod:`flsplit.runtime.sync_client`; this docstring describes the
protocol both follow.

The server's sampler (:mod:`flsplit.plan.sampling.samplers`) gives every round a schedule
``counts[s, k]``: the samples client ``k`` contributes to global step ``s``. The round
is then run step by step, as the one-process reference :mod:`benchmarks.syncstep`
defines, but over the gRPC data plane of :mod:`flsplit.runtime.dataplane`.

Protocol (per global step ``s``, frames carry ``step = s``)
------------------------------------------------------------
Client ``k`` with ``counts[s, k] > 0`` (the others sit the step out and send nothing):

1. draws its next ``counts[s, k]`` samples (its data in a seeded order, without
   replacement within a pass; :class:`~flsplit.runtime.sync_client.SampleStream`),
   runs its head and sends ``Forward(step=s)`` with exactly that many rows;
2. the helper waits until the forward of every participating client it serves has
   arrived (a barrier keyed by the step index), runs ONE shared body on their
   concatenation in a fixed client order (the order of the helper's client list) and
   answers each client with its own rows;
3. the client runs its tail and its loss (labels stay on the client), a mean over its own
   samples, and sends ``Backward(step=s)`` with the gradient at cut 2;
4. once all gradients of the step are in, the helper scales client ``k``'s rows by
   ``n_k / N`` (``N`` the step's batch at this helper, its *sub-batch*), so the scaled
   losses add up to the mean loss over the sub-batch, runs one backward and one
   optimizer step of the body, and answers each client with its rows of the gradient at
   cut 1, multiplied by ``N / n_k``: the gradient of the client's own mean loss through
   the shared body.
5. Head and tail (``client_parts``):

   ``"shared"`` (exact)
       the client does not step on its own; it posts the flat gradient of its head and
       tail parameters with its next ``Sync`` request. The helper sums the posted
       gradients of the step weighted by ``n_k / N`` (an all-reduce over its clients)
       and every client, also those sitting the step out, applies that sum with its
       optimizer before its next forward (``Sync(step=t)`` returns the sums of all steps
       before ``t`` the client has not applied yet, in order; ``Sync(step=steps)`` at the
       end of the round the rest). All head and tail copies of a helper's clients stay
       equal, and one step is exactly the centralised step of the unsplit model on the
       sub-batch (tested within 1e-6 over several steps, with momentum). The helper sees
       each client's head and tail gradient (besides the activations and cut-2
       gradients it sees anyway).
   ``"local"``
       each client steps its own head and tail on its own mean gradient right after the
       step (``client_parts="local"`` of :mod:`~benchmarks.syncstep`); the copies
       drift apart during the round and FedAvg averages them at its end (for plain SGD
       and one step, the example-weighted average equals the centralised step).

Clients of different helpers: each helper batches its own clients only (its sub-batch,
and its body's BatchNorm statistics are over that sub-batch); each helper steps its own
body copy on the mean over its sub-batch, and the bodies (like the head/tail copies of
different helpers) are averaged by FedAvg at the end of the round, weighted by examples.
With one helper a step is the centralised step on the global batch.

Failures. A client that sends nothing while it has no request in progress for the
helper's idle timeout is dropped (:class:`~flsplit.runtime.dataplane.HelperServer`); the
barrier stops waiting for it, its rows are left out (its gradient rows count as zero and
the others' weights are renormalised), and the round carries on with the others. Every
request is checked like any data-plane request: token, frame, then the tensor's fit: a
forward must have exactly the scheduled number of rows and the body input's shape and
dtype, a gradient exactly the shape of the client's rows of the body output.

Synchronous steps carry one tensor per cut: a cut that several tensors cross
(:mod:`flsplit.model.crossing`) is refused with the reason (:func:`multi_tensor_sync`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from flsplit.config import CLIENT_PARTS
from flsplit.runtime.checks import InputError, TensorSpec, check_gradient
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.worker import ClientBody, OptimizerFn, TaskError, TaskRecord

__all__ = ["SyncWorker"]


@dataclass
class _Pending:
    tensor: torch.Tensor | None
    future: Future


@dataclass
class _StepState:
    """The forward of the step in progress: who is in it and the autograd graph."""

    step: int
    clients: list[str]
    sizes: list[int]
    body_in: torch.Tensor
    body_out: torch.Tensor
    row_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)


def multi_tensor_sync(tensors: tuple) -> str:
    """Why synchronous steps refuse a cut that ``tensors`` cross."""
    return (
        f"the cut carries {len(tensors)} tensors; synchronous steps (run config sampler "
        "other than 'local') carry one tensor per cut; use sampler='local' or cuts that one "
        "tensor crosses"
    )


class SyncWorker:
    """The helper side of synchronous steps: barriers, one shared body, reductions.

    Parameters
    ----------
    body : nn.Module
        The shared body (trained in place).
    clients : Sequence[str]
        The clients served, in the order their rows are concatenated.
    counts : np.ndarray
        ``(steps, len(clients))`` samples of each client in each global step of the round.
    optimizer_fn : callable
        Builds the body's optimizer from its parameters.
    input_spec : TensorSpec, optional
        Shape (without batch) and dtype of the body input; learned from the first
        forward if not given.
    client_parts : {"shared", "local"}
        ``"shared"``: the worker also all-reduces the clients' head and tail gradients
        (``Sync`` requests); ``"local"``: it does not.
    grad_size : int, optional
        Number of head and tail parameters (the length of a posted gradient); learned
        from the first post if not given.
    emulation : Emulation
        Stretches the body compute.
    """

    def __init__(
        self,
        body: nn.Module,
        clients: Sequence[str],
        counts: np.ndarray,
        optimizer_fn: OptimizerFn,
        input_spec: TensorSpec | None = None,
        client_parts: str = "shared",
        grad_size: int | None = None,
        emulation: Emulation = NO_EMULATION,
    ) -> None:
        if client_parts not in CLIENT_PARTS:
            raise ValueError(
                f"client-parts: {client_parts!r} is not one of {', '.join(CLIENT_PARTS)}"
            )
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != len(clients) or np.any(counts < 0):
            raise ValueError(
                f"counts must be (steps, {len(clients)}) non-negative integers, "
                f"got shape {counts.shape}"
            )
        self.module = body
        self.module.train()
        self.optimizer = optimizer_fn(body.parameters())
        self.clients = [str(c) for c in clients]
        self._col = {c: i for i, c in enumerate(self.clients)}
        self.counts = counts.astype(np.int64)
        self.steps = int(counts.shape[0])
        self.input_spec = input_spec
        self.client_parts = client_parts
        self.grad_size = grad_size
        self.emulation = emulation
        # HelperServer / ClientApp view: one entry per client, all the same body
        self.bodies: dict[str, ClientBody] = {
            c: ClientBody(body, self.optimizer, input_spec=input_spec) for c in self.clients
        }
        self.executed: list[TaskRecord] = []
        self.step_examples: list[int] = []  # body batch of every step run (sub-batch)
        self.step_clients: list[int] = []
        self.dropped: set[str] = set()
        self.retired: set[str] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._arrivals: dict[tuple[int, str], dict[str, _Pending]] = {}
        self._last_fwd: dict[str, int] = dict.fromkeys(self.clients, -1)
        self._open_bwd: dict[str, int] = {}  # client -> step whose gradient is awaited
        self._to_post: dict[str, int] = {}  # client -> step whose head/tail grad it owes
        self._posted: dict[int, dict[str, torch.Tensor]] = {}
        self._rows: dict[int, torch.Tensor] = {}  # step -> reduced head/tail gradient
        self._fetched: dict[str, int] = dict.fromkeys(self.clients, -1)
        self._fetches: list[tuple[str, int, Future]] = []
        self._grad_dtype: torch.dtype | None = None
        self._current: _StepState | None = None
        self.done_through = -1
        self._thread = threading.Thread(target=self._run, name="flsplit-sync-worker", daemon=True)
        self._thread.start()

    # -- requests (data-plane threads) ----------------------------------------------

    def submit_step(
        self, client: str, kind: str, step: int, tensor: torch.Tensor | None
    ) -> Future:
        """Check a ``"fwd"``, ``"bwd"`` or ``"sync"`` request of ``client`` for global
        step ``step`` and queue it.

        Returns
        -------
        Future
            Resolves to the reply tensor once the step's barrier is passed.

        Raises
        ------
        TaskError
            Unknown or dropped client, a step out of order or not scheduled for it.
        InputError
            A tensor that does not fit (the message names the field).
        """
        future: Future = Future()
        with self._cond:
            if self._stopped:
                raise TaskError("helper worker is stopped")
            col = self._col.get(client)
            if col is None:
                raise TaskError(f"client {client!r:.80} is not served by this helper")
            if client in self.dropped:
                raise TaskError(f"client {client!r} was dropped")
            if kind == "fwd":
                self._check_fwd(client, col, step, tensor)
                self._last_fwd[client] = step
                self._arrivals.setdefault((step, "fwd"), {})[client] = _Pending(tensor, future)
            elif kind == "bwd":
                self._check_bwd(client, step, tensor)
                del self._open_bwd[client]
                self._arrivals.setdefault((step, "bwd"), {})[client] = _Pending(tensor, future)
            elif kind == "sync":
                self._check_sync(client, col, step, tensor)
                owed = self._to_post.pop(client, None)
                if owed is not None and tensor is not None:
                    self._posted.setdefault(owed, {})[client] = tensor
                self._fetches.append((client, step, future))
                self._resolve_fetches()
            else:
                raise TaskError(f"task kind {kind!r:.20} is not 'fwd', 'bwd' or 'sync'")
            self._cond.notify_all()
        return future

    def _check_fwd(self, client: str, col: int, step: int, tensor: torch.Tensor | None) -> None:
        if not 0 <= step < self.steps:
            raise TaskError(f"step {step} is not in this round's [0, {self.steps})")
        if step <= self._last_fwd[client] or step <= self.done_through:
            raise TaskError(f"step {step}: client {client!r} already sent it or it is over")
        if client in self._open_bwd or client in self._to_post:
            raise TaskError(
                f"step {step}: client {client!r} has not finished its step "
                f"{self._open_bwd.get(client, self._to_post.get(client))}"
            )
        wanted = int(self.counts[step, col])
        if wanted == 0:
            raise TaskError(f"client {client!r} has no samples in step {step}")
        if tensor is None:
            raise InputError("fwd frame carries no tensor")
        if isinstance(tensor, tuple):
            raise InputError(multi_tensor_sync(tensor))
        shape = tuple(tensor.shape)
        if not shape or shape[0] != wanted:
            raise InputError(
                f"tensor shape {shape}: step {step} schedules {wanted} samples of client "
                f"{client!r}"
            )
        if self.input_spec is not None:
            self.input_spec.check(tensor)

    def _check_bwd(self, client: str, step: int, tensor: torch.Tensor | None) -> None:
        if self._open_bwd.get(client) != step:
            raise TaskError(f"backward of step {step} without its forward")
        current = self._current
        if current is None or current.step != step:
            raise TaskError(f"backward of step {step}, which is not in progress")
        if tensor is None:
            raise InputError("bwd frame carries no tensor")
        if isinstance(tensor, tuple):
            raise InputError(multi_tensor_sync(tensor))
        check_gradient(
            tensor,
            current.row_shape[client],
            current.body_out.dtype,
            expected="the client's rows of the body output",
        )

    def _check_sync(self, client: str, col: int, step: int, tensor: torch.Tensor | None) -> None:
        if self.client_parts != "shared":
            raise TaskError("sync requests need client-parts 'shared'")
        if not self._fetched[client] < step <= self.steps:
            raise TaskError(
                f"sync to step {step}: not in ({self._fetched[client] + 1}, {self.steps}]"
            )
        if step < self.steps and self.counts[step, col] == 0:
            raise TaskError(f"sync to step {step}: client {client!r} has no samples in it")
        if client in self._open_bwd:
            raise TaskError(f"sync before the backward of step {self._open_bwd[client]}")
        if any(c == client for c, _, _ in self._fetches):
            raise TaskError("a sync request of this client is already waiting")
        owed = client in self._to_post
        if owed and tensor is None:
            raise InputError(
                f"sync frame carries no tensor: the head and tail gradient of step "
                f"{self._to_post[client]} is due"
            )
        if not owed and tensor is not None:
            raise InputError("sync frame carries a tensor but no gradient is due")
        if tensor is None:
            return
        if isinstance(tensor, tuple):
            raise InputError("sync frame carries several tensors; a gradient is one vector")
        if tensor.dim() != 1 or not tensor.is_floating_point():
            raise InputError(
                f"tensor shape {tuple(tensor.shape)} / dtype {tensor.dtype}: a head and tail "
                "gradient is a 1-D floating-point vector"
            )
        if self.grad_size is not None and tensor.shape[0] != self.grad_size:
            raise InputError(
                f"tensor shape {tuple(tensor.shape)} does not match the {self.grad_size} "
                "head and tail parameters"
            )
        if self._grad_dtype is not None and tensor.dtype != self._grad_dtype:
            raise InputError(f"tensor dtype {tensor.dtype} is not {self._grad_dtype}")
        self.grad_size = int(tensor.shape[0])
        self._grad_dtype = tensor.dtype

    def drop(self, client: str) -> None:
        """Stop waiting for ``client``: its queued requests fail, later steps go on
        without it."""
        with self._cond:
            if client not in self._col or client in self.dropped:
                return
            self.dropped.add(client)
            self._fail(client, TaskError(f"client {client!r} was dropped"))
            self._cond.notify_all()

    def retire(self, client: str) -> None:
        """``client`` finished its round: no barrier waits for it any more."""
        with self._cond:
            self.retired.add(client)
            self._fail(client, TaskError(f"client {client!r} finished"))
            self._cond.notify_all()

    def _fail(self, client: str, error: Exception) -> None:
        for pending in self._arrivals.values():
            item = pending.pop(client, None)
            if item is not None and not item.future.done():
                item.future.set_exception(error)
        for c, _, future in self._fetches:
            if c == client and not future.done():
                future.set_exception(error)
        self._fetches = [f for f in self._fetches if f[0] != client]
        self._open_bwd.pop(client, None)
        self._to_post.pop(client, None)

    def stop(self) -> None:
        """Stop the worker thread; waiting requests fail."""
        with self._cond:
            self._stopped = True
            for client in self.clients:
                self._fail(client, TaskError("helper worker stopped"))
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def busy(self, client: str) -> bool:
        """Whether ``client`` has a request waiting at a barrier."""
        with self._cond:
            return any(client in p for p in self._arrivals.values()) or any(
                c == client for c, _, _ in self._fetches
            )

    # -- the step loop (worker thread) ------------------------------------------------

    def _gone(self, client: str) -> bool:
        return client in self.dropped or client in self.retired

    def _wait_for(
        self, key: tuple[int, str], expected: Iterable[str]
    ) -> dict[str, _Pending] | None:
        """Block until every expected (not dropped) client's request for ``key`` is in."""
        expected = list(expected)
        with self._cond:
            while True:
                if self._stopped:
                    return None
                got = self._arrivals.get(key, {})
                waiting = [c for c in expected if not self._gone(c) and c not in got]
                if not waiting:
                    arrived = self._arrivals.pop(key, {})
                    return {c: arrived[c] for c in expected if c in arrived}
                self._cond.wait(0.5)

    def _run(self) -> None:
        for step in range(self.steps):
            participants = [c for c in self.clients if self.counts[step, self._col[c]] > 0]
            if not self._run_step(step, participants):
                return
            with self._cond:
                self.done_through = step
                self._resolve_fetches()
                self._cond.notify_all()

    def _run_step(self, step: int, participants: list[str]) -> bool:
        fwd = self._wait_for((step, "fwd"), participants)
        if fwd is None:
            return False
        if not fwd:
            return True
        order = [c for c in participants if c in fwd]
        start = time.time()
        try:
            with self.emulation.compute():
                inputs = [fwd[c].tensor for c in order]
                body_in = torch.cat([t.detach() for t in inputs]).requires_grad_(True)
                with torch.enable_grad():
                    body_out = self.module(body_in)
        except Exception as err:  # contained to this step's clients
            for c in order:
                fwd[c].future.set_exception(err)
            return True
        if self.input_spec is None:
            self.input_spec = TensorSpec(tuple(body_in.shape[1:]), body_in.dtype)
        sizes = [int(fwd[c].tensor.shape[0]) for c in order]  # type: ignore[union-attr]
        state = _StepState(step, order, sizes, body_in, body_out)
        rows = torch.split(body_out.detach(), sizes)
        with self._cond:
            self._current = state
            for c, r in zip(order, rows, strict=True):
                if self._gone(c):
                    continue
                state.row_shape[c] = tuple(r.shape)
                self._open_bwd[c] = step
                fwd[c].future.set_result(r)
        self.executed.append(TaskRecord(f"step{step}", "fwd", start, time.time(), start))

        bwd = self._wait_for((step, "bwd"), order)
        if bwd is None:
            return False
        with self._cond:
            self._current = None
            for c in order:
                self._open_bwd.pop(c, None)
        present = [c for c in order if c in bwd]
        self.step_examples.append(sum(sizes))
        self.step_clients.append(len(order))
        if not present:
            return True
        total = sum(n for c, n in zip(order, sizes, strict=True) if c in bwd)
        start = time.time()
        try:
            with self.emulation.compute():
                grads = []
                for c, n in zip(order, sizes, strict=True):
                    if c in bwd:
                        grads.append(bwd[c].tensor.to(body_out.dtype) * (n / total))  # type: ignore[union-attr]
                    else:  # dropped after its forward: its loss is left out
                        grads.append(torch.zeros((n, *body_out.shape[1:]), dtype=body_out.dtype))
                self.optimizer.zero_grad(set_to_none=True)
                body_out.backward(torch.cat(grads))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                assert body_in.grad is not None
                back = torch.split(body_in.grad, sizes)
        except Exception as err:
            for c in present:
                bwd[c].future.set_exception(err)
            return True
        with self._cond:
            for c, n, g in zip(order, sizes, back, strict=True):
                if c in bwd:
                    if self.client_parts == "shared" and not self._gone(c):
                        self._to_post[c] = step
                    bwd[c].future.set_result(g * (total / n))
        for c, n in zip(order, sizes, strict=True):
            if c in bwd:
                self.bodies[c].batches += 1
                self.bodies[c].examples += n
        self.executed.append(TaskRecord(f"step{step}", "bwd", start, time.time(), start))
        if self.client_parts == "shared":
            return self._reduce(step, present, dict(zip(order, sizes, strict=True)))
        return True

    def _reduce(self, step: int, present: list[str], sizes: dict[str, int]) -> bool:
        """Wait for the head and tail gradients of the step and keep their weighted sum."""
        with self._cond:
            while True:
                if self._stopped:
                    return False
                posted = self._posted.get(step, {})
                if all(c in posted or self._gone(c) for c in present):
                    break
                self._cond.wait(0.5)
            posted = self._posted.pop(step, {})
            if posted:
                total = sum(sizes[c] for c in posted)
                ordered = sorted(posted, key=present.index)  # fixed order: reproducible sums
                self._rows[step] = torch.stack(
                    [posted[c] * (sizes[c] / total) for c in ordered]
                ).sum(dim=0)
        return True

    def _resolve_fetches(self) -> None:
        """Answer the sync requests whose steps are all done (lock held)."""
        waiting = []
        for client, target, future in self._fetches:
            if self.done_through < target - 1:
                waiting.append((client, target, future))
                continue
            steps = [s for s in sorted(self._rows) if self._fetched[client] < s < target]
            if steps:
                reply = torch.stack([self._rows[s] for s in steps])
            else:
                size = self.grad_size or 0
                reply = torch.zeros((0, size), dtype=self._grad_dtype or torch.float32)
            self._fetched[client] = target - 1
            future.set_result(reply)
        self._fetches = waiting
        live = [self._fetched[c] for c in self.clients if not self._gone(c)]
        floor = min(live) if live else self.steps
        for s in [s for s in self._rows if s <= floor]:
            del self._rows[s]
