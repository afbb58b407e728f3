"""The helper's worker: body copies per client and one task at a time.

Requests arrive on many data-plane threads; the worker executes them on a single thread
so that the planner's one-machine model holds. Among the tasks that are ready it takes
the one that comes first in the planned priority order (first come, first served when no
order was given) and never idles while a task is ready.

Every tensor is checked before it is queued (:meth:`HelperWorker.check`): a forward input
must have the shape the client's head produces (any batch size, the rest fixed; given up
front or learned from the client's first forward that ran) and its dtype, a backward
gradient exactly the shape and dtype of the output of that client's pending forward. A
tensor that does not fit raises :class:`InputError` and leaves the client's state as it
was, so the client may retry with a good one.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import nn

from flsplit.runtime.emulation import NO_EMULATION, Emulation

OptimizerFn = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class TaskError(RuntimeError):
    """A task that cannot be run for the client that sent it."""


class InputError(ValueError):
    """A tensor that does not fit what the client's body expects; the message names the
    field (``tensor shape``, ``tensor dtype``)."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape (without the batch dimension) and dtype of a body's input."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class ClientBody:
    """One client's copy of the body and its training state."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    pending_input: torch.Tensor | None = None
    pending_output: torch.Tensor | None = None
    input_spec: TensorSpec | None = None
    batches: int = 0
    examples: int = 0
    busy_seconds: float = 0.0


@dataclass(order=True)
class _Task:
    rank: int
    seq: int
    queued: float = field(compare=False)
    client: str = field(compare=False)
    kind: str = field(compare=False)
    tensor: torch.Tensor = field(compare=False)
    future: Future = field(compare=False)


@dataclass
class TaskRecord:
    """What the worker ran, for timelines and for checking the executed order.

    ``queued``, ``start`` and ``end`` are wall-clock times (``time.time()``).
    """

    client: str
    kind: str
    start: float
    end: float
    queued: float = 0.0


class HelperWorker:
    """Run body forward and backward tasks for several clients on one thread.

    Parameters
    ----------
    bodies : Mapping[str, nn.Module]
        The body each served client trains, owned by the worker (clients cut at different
        points have bodies of different depths); see :meth:`replicated` for one body
        copied per client.
    optimizer_fn : callable
        Builds an optimizer from a parameter iterable (one per client body).
    order : Sequence[tuple[str, str]], optional
        Priority order of ``(client, "fwd" | "bwd")`` tasks; earlier means more urgent.
        Tasks not listed come after the listed ones, first come first served.
    emulation : Emulation, optional
        Stretches every task's compute to emulate a slower device.
    input_specs : Mapping[str, TensorSpec], optional
        Expected input of each client's body; a client without one has its spec learned
        from its first forward task that ran.
    max_batch : int, optional
        Largest batch accepted.
    """

    def __init__(
        self,
        bodies: Mapping[str, nn.Module],
        optimizer_fn: OptimizerFn,
        order: Sequence[tuple[str, str]] | None = None,
        emulation: Emulation = NO_EMULATION,
        input_specs: Mapping[str, TensorSpec] | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.emulation = emulation
        self.max_batch = max_batch
        self.bodies: dict[str, ClientBody] = {}
        specs = input_specs or {}
        for client, module in bodies.items():
            module.train()
            self.bodies[client] = ClientBody(
                module, optimizer_fn(module.parameters()), input_spec=specs.get(client)
            )
        self._rank = {tuple(task): i for i, task in enumerate(order or [])}
        self._unranked = len(self._rank)
        self._queue: list[_Task] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self.executed: list[TaskRecord] = []
        self._thread = threading.Thread(target=self._run, name="flsplit-helper-worker", daemon=True)
        self._thread.start()

    @classmethod
    def replicated(
        cls,
        body: nn.Module,
        clients: Sequence[str],
        optimizer_fn: OptimizerFn,
        order: Sequence[tuple[str, str]] | None = None,
        input_spec: TensorSpec | None = None,
        max_batch: int | None = None,
    ) -> HelperWorker:
        """A worker holding one deep copy of ``body`` per client."""
        specs = dict.fromkeys(clients, input_spec) if input_spec is not None else None
        return cls(
            {c: copy.deepcopy(body) for c in clients},
            optimizer_fn,
            order,
            input_specs=specs,
            max_batch=max_batch,
        )

    def check(self, client: str, kind: str, tensor: torch.Tensor) -> None:
        """Check that ``tensor`` fits a ``kind`` task of ``client`` right now.

        Raises
        ------
        TaskError
            Unknown client or kind, or a backward task without a pending forward.
        InputError
            The tensor's shape or dtype does not fit; names the field.
        """
        state = self.bodies.get(client)
        if state is None:
            raise TaskError(f"client {client!r:.80} is not served by this helper")
        if kind not in ("fwd", "bwd"):
            raise TaskError(f"task kind {kind!r:.20} is not 'fwd' or 'bwd'")
        shape = tuple(tensor.shape)
        if kind == "bwd":
            out = state.pending_output
            if out is None:
                raise TaskError("backward task without a preceding forward task")
            if shape != tuple(out.shape):
                raise InputError(
                    f"tensor shape {shape} of the gradient does not match the body output "
                    f"shape {tuple(out.shape)}"
                )
            if tensor.dtype != out.dtype:
                raise InputError(
                    f"tensor dtype {tensor.dtype} of the gradient is not the body output's "
                    f"{out.dtype}"
                )
            return
        if not shape or shape[0] < 1:
            raise InputError(f"tensor shape {shape} has no batch dimension of size >= 1")
        if self.max_batch is not None and shape[0] > self.max_batch:
            raise InputError(f"tensor shape {shape}: batch larger than {self.max_batch}")
        spec = state.input_spec
        if spec is not None:
            if shape[1:] != spec.shape:
                raise InputError(
                    f"tensor shape {shape} does not fit the body input (batch, "
                    f"{', '.join(map(str, spec.shape))})"
                )
            if tensor.dtype != spec.dtype:
                raise InputError(
                    f"tensor dtype {tensor.dtype} is not the body input's {spec.dtype}"
                )

    def submit(self, client: str, kind: str, tensor: torch.Tensor) -> Future:
        """Check a ``"fwd"`` or ``"bwd"`` task (:meth:`check`) and queue it.

        Returns
        -------
        Future
            Resolves to the output tensor.
        """
        self.check(client, kind, tensor)
        future: Future = Future()
        rank = self._rank.get((client, kind), self._unranked)
        with self._cond:
            if self._stopped:
                raise TaskError("helper worker is stopped")
            heapq.heappush(
                self._queue,
                _Task(rank, next(self._seq), time.time(), client, kind, tensor, future),
            )
            self._cond.notify()
        return future

    def stop(self) -> None:
        """Stop the worker thread; queued tasks fail."""
        with self._cond:
            self._stopped = True
            for task in self._queue:
                task.future.set_exception(TaskError("helper worker stopped"))
            self._queue.clear()
            self._cond.notify()
        self._thread.join(timeout=10)

    def drop(self, client: str) -> None:
        """Forget a client's in-flight state (its update will not be returned)."""
        state = self.bodies.pop(client, None)
        if state is not None:
            state.pending_input = state.pending_output = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                task = heapq.heappop(self._queue)
            start = time.time()
            try:
                with self.emulation.compute():
                    result = self._execute(task)
            except Exception as err:  # contained to the task's client
                end = time.time()
                task.future.set_exception(err)
            else:
                end = time.time()
                task.future.set_result(result)
            self.executed.append(TaskRecord(task.client, task.kind, start, end, task.queued))
            state = self.bodies.get(task.client)
            if state is not None:
                state.busy_seconds += end - start

    def _execute(self, task: _Task) -> torch.Tensor:
        state = self.bodies.get(task.client)
        if state is None:
            raise TaskError(f"client {task.client!r} was dropped")
        if task.kind == "fwd":
            return self._forward(state, task.tensor)
        return self._backward(state, task.tensor)

    @staticmethod
    def _forward(state: ClientBody, activation: torch.Tensor) -> torch.Tensor:
        inp = activation.detach().requires_grad_(True)
        with torch.enable_grad():
            out = state.module(inp)
        state.pending_input, state.pending_output = inp, out
        if state.input_spec is None:
            state.input_spec = TensorSpec(tuple(inp.shape[1:]), inp.dtype)
        return out.detach()

    @staticmethod
    def _backward(state: ClientBody, grad_output: torch.Tensor) -> torch.Tensor:
        inp, out = state.pending_input, state.pending_output
        if out is None or inp is None:
            raise TaskError("backward task without a preceding forward task")
        if tuple(grad_output.shape) != tuple(out.shape):
            raise TaskError(
                f"gradient shape {tuple(grad_output.shape)} does not match the body output "
                f"shape {tuple(out.shape)}"
            )
        state.optimizer.zero_grad(set_to_none=True)
        out.backward(grad_output.to(out.dtype))
        state.optimizer.step()
        state.pending_input = state.pending_output = None
        state.batches += 1
        state.examples += int(inp.shape[0])
        grad = inp.grad
        return grad if grad is not None else torch.zeros_like(inp)
