"""The helper's worker: body copies per client (or one shared body), one task at a time.

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

Several tensors per cut
-----------------------
A forward input may be a tuple of tensors (:mod:`flsplit.model.crossing`) with gradient
flags (the frame's ``grads``): the body is called ``body(*inputs)``, every input detached
and only the flagged ones requiring a gradient; each tensor is checked against its own
spec. A tuple output is answered with its tensors detached, those that need a gradient
(floating point, requiring one) flagged; the backward takes the gradients of the flagged
outputs, in order, and answers with the gradients of the flagged inputs, in order. A
single tensor is handled exactly as before.

Micro-batches
-------------
A task may carry micro-batch ``micro`` of ``micros`` (see :mod:`flsplit.runtime.wire`).
The worker keeps one pending forward per micro-batch of a client; a backward task
accumulates its gradients into the body's, and the body steps once, when the batch's
``micros``-th backward ran (the gradients are zeroed before the batch's first backward).
A client that scales each micro-batch's loss by its share of the batch gets exactly the
step of the whole batch (for layers that treat samples independently: BatchNorm
normalises each micro-batch on its own). ``"shared"`` mode takes batches of one
micro-batch only (its optimizer is shared, so accumulating across clients would mix
their gradients).

The client's own optimizer
--------------------------
A client whose own training loop trains the split model
(:mod:`flsplit.runtime.remote_body`) sends its optimizer's events with its frames (the
``optim`` field of :mod:`flsplit.runtime.wire`). Its body then follows them: a backward
task only adds its gradients, a ``zero`` event clears them and a ``step`` event steps the
body with the client's optimizer class and hyperparameters (the learning rate a scheduler
set included), one optimizer kept across steps so momentum and Adam's moments carry on.
Only ``torch.optim`` classes are built (a class name from the network never imports
anything) and only in ``"per-client"`` mode, whole batches.

A proximal term (``proximal_mu``, FedProx's ``proximal-mu`` of the round) adds the
gradient of the term a FedProx client adds to its loss for the weights it holds to the
body's gradients before every step: of ``mu / 2 * ||w - w0||^2`` (``proximal_term =
"squared"``, the FedProx paper's) or of ``mu / 2 * ||w - w0||`` per tensor (``"norm"``,
Flower's FedProx docstring), ``w0`` being the weights the round started from.

Memory modes (``memory_mode``)
------------------------------
``"per-client"`` (default)
    Every client trains its own body copy with its own optimizer; a forward keeps the
    autograd graph until that client's backward. One batch step of client ``k`` is
    exactly the step of its own copy, as if the body were local to the client; the
    server then averages the copies (with the clients' heads and tails) like any
    federated update. Memory grows by one body, its optimizer state and one graph per
    client.
``"shared"``
    All clients that map to the same module object train that one module with one
    optimizer (built once per worker): sequential SGD on one body across clients, in
    the order the worker executes their backward tasks. A forward runs without
    autograd and keeps only its input (the cut-1 activation) and the random-number
    state; the backward recomputes the forward from that input under the same random
    state (dropout masks equal), with the body's buffers (BatchNorm running statistics)
    restored afterwards so they are updated once per batch, then back-propagates and
    steps. No per-client optimizer state is kept: momentum and the like carry over
    from one client's step to the next. The backward evaluates the gradient at the
    body's weights at backward time: for a client whose forward and backward are not
    separated by another client's backward this equals the per-client step of that
    client from the same weights (checked within 1e-6); otherwise the recomputed forward
    uses the newer weights. Memory is one body and optimizer plus one cut-1 input per
    in-flight client.
"""

from __future__ import annotations

import copy
import heapq
import inspect
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import nn

from flsplit.model.crossing import Activation, as_tuple
from flsplit.runtime import body_steps as steps
from flsplit.runtime.body_steps import ClientBody as ClientBody  # re-exported
from flsplit.runtime.body_steps import TaskError as TaskError  # re-exported
from flsplit.runtime.checks import (
    ActivationSpec,
    InputError,
    check_activation,
    check_gradients,
)
from flsplit.runtime.checks import TensorSpec as TensorSpec  # re-exported: callers' spec
from flsplit.runtime.emulation import NO_EMULATION, Emulation

OptimizerFn = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
#: Helper memory modes: one body copy per client, or one shared body with recompute.
MEMORY_MODES = ("per-client", "shared")


@dataclass(order=True)
class _Task:
    rank: int
    seq: int
    queued: float = field(compare=False)
    client: str = field(compare=False)
    kind: str = field(compare=False)
    tensor: Activation = field(compare=False)
    future: Future = field(compare=False)
    micro: int = field(default=0, compare=False)
    micros: int = field(default=1, compare=False)
    optim: list[list] | None = field(default=None, compare=False)
    grads: tuple[bool, ...] | None = field(default=None, compare=False)


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
    input_specs : Mapping[str, ActivationSpec], optional
        Expected input of each client's body (a tuple of specs for a tuple of tensors);
        a client without one has its spec learned from its first forward task that ran.
    max_batch : int, optional
        Largest batch accepted.
    memory_mode : {"per-client", "shared"}
        ``"per-client"``: one optimizer per client body, autograd graph kept between
        forward and backward. ``"shared"``: clients given the same module object share
        it and one optimizer, and the forward is recomputed at backward time from the
        kept input (see the module docstring for what each step equals).
    proximal_mu : float
        FedProx's ``mu``: the gradient of the proximal term is added to the body's before
        every step (0: none).
    proximal_term : {"squared", "norm"}
        ``mu / 2 * ||w - w0||^2`` or ``mu / 2 * ||w - w0||`` per tensor (``w0``: the
        weights the round started from).
    """

    def __init__(
        self,
        bodies: Mapping[str, nn.Module],
        optimizer_fn: OptimizerFn,
        order: Sequence[tuple[str, str]] | None = None,
        emulation: Emulation = NO_EMULATION,
        input_specs: Mapping[str, ActivationSpec] | None = None,
        max_batch: int | None = None,
        memory_mode: str = "per-client",
        proximal_mu: float = 0.0,
        proximal_term: str = "squared",
    ) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu={proximal_mu} must be >= 0")
        self.proximal = ProximalTerm(float(proximal_mu), proximal_term)
        self.proximal_mu = float(proximal_mu)
        if memory_mode not in MEMORY_MODES:
            raise ValueError(
                f"memory_mode: {memory_mode!r} is not one of {', '.join(MEMORY_MODES)}"
            )
        self.emulation = emulation
        self.max_batch = max_batch
        self.memory_mode = memory_mode
        self.bodies: dict[str, ClientBody] = {}
        specs = input_specs or {}
        shared = memory_mode == "shared"
        optimizers: dict[int, torch.optim.Optimizer] = {}
        for client, module in bodies.items():
            module.train()
            if shared:
                if id(module) not in optimizers:
                    optimizers[id(module)] = optimizer_fn(module.parameters())
                optimizer = optimizers[id(module)]
            else:
                optimizer = optimizer_fn(module.parameters())
            self.bodies[client] = ClientBody(
                module, optimizer, input_spec=specs.get(client), recompute=shared
            )
            if self.proximal_mu > 0:
                # a frozen tensor never moves from its start: no copy of it (a frozen base)
                self.bodies[client].anchor = [
                    p.detach().clone() if p.requires_grad else p.detach()
                    for p in module.parameters()
                ]
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
        input_spec: ActivationSpec | None = None,
        max_batch: int | None = None,
    ) -> HelperWorker:
        """A worker holding one deep copy of ``body`` per client."""
        return cls(
            {c: copy.deepcopy(body) for c in clients},
            optimizer_fn,
            order,
            input_specs=_same_spec(clients, input_spec),
            max_batch=max_batch,
        )

    @classmethod
    def shared(
        cls,
        body: nn.Module,
        clients: Sequence[str],
        optimizer_fn: OptimizerFn,
        order: Sequence[tuple[str, str]] | None = None,
        input_spec: ActivationSpec | None = None,
        max_batch: int | None = None,
        emulation: Emulation = NO_EMULATION,
    ) -> HelperWorker:
        """A worker in ``"shared"`` memory mode: ``body`` itself (not copied) is trained
        by every client, with one optimizer."""
        return cls(
            dict.fromkeys(clients, body),
            optimizer_fn,
            order,
            emulation=emulation,
            input_specs=_same_spec(clients, input_spec),
            max_batch=max_batch,
            memory_mode="shared",
        )

    def held_bytes(self) -> int:
        """Bytes of the tensors the worker holds itself: body parameters, buffers and
        gradients, optimizer state and pending forward inputs and outputs (each storage
        counted once). The autograd graph a ``"per-client"`` forward keeps is not
        included."""
        seen: set[tuple[str, int]] = set()
        total = 0

        def add(tensor: torch.Tensor | None) -> None:
            nonlocal total
            if tensor is None or tensor.device.type == "meta":
                return
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()

        for state in list(self.bodies.values()):
            for param in state.module.parameters():
                add(param)
                add(param.grad)
            for buffer in state.module.buffers():
                add(buffer)
            for opt_state in state.optimizer.state.values():
                for value in opt_state.values():
                    if isinstance(value, torch.Tensor):
                        add(value)
            for value in [*state.inputs.values(), *state.outputs.values()]:
                for tensor in as_tuple(value):
                    add(tensor)
        return total

    def check(
        self,
        client: str,
        kind: str,
        tensor: Activation | None,
        micro: int = 0,
        micros: int = 1,
        optim: list[list] | None = None,
    ) -> None:
        """Check that ``tensor`` fits a ``kind`` task of ``client`` right now.

        Parameters
        ----------
        client, kind : str
            The client and ``"fwd"`` or ``"bwd"``.
        tensor : Activation
            The activation (forward) or the gradients of the output (backward).
        micro, micros : int
            Micro-batch ``micro`` of ``micros`` in the client's batch.
        optim : list, optional
            The client's optimizer events to apply first (its own training loop).

        Raises
        ------
        TaskError
            Unknown client or kind, a backward task without a pending forward, or
            micro-batches in ``"shared"`` mode, or optimizer events where they cannot be
            followed.
        InputError
            The tensor's shape or dtype does not fit; names the field.
        """
        state = self.bodies.get(client)
        if state is None:
            raise TaskError(f"client {client!r:.80} is not served by this helper")
        if kind not in ("fwd", "bwd", "optim"):
            raise TaskError(f"task kind {kind!r:.20} is not 'fwd', 'bwd' or 'optim'")
        if optim is not None:
            _check_followable(state, optim, micros)
        if kind == "optim":
            return
        if tensor is None:
            raise InputError(f"a {kind} task needs a tensor")
        if not 0 <= micro < micros:
            raise TaskError(f"micro-batch {micro} is not in [0, {micros})")
        if micros > 1 and state.recompute:
            raise TaskError(
                f"{micros} micro-batches per batch: the helper's 'shared' memory mode takes "
                "whole batches only (use helper-memory='per-client' or micro-batches=1)"
            )
        if kind == "bwd":
            out = state.outputs.get(micro)
            if out is None:
                raise TaskError("backward task without a preceding forward task")
            check_gradients(tensor, out)
            return
        first = as_tuple(tensor)
        if not first:
            raise InputError("a fwd task needs at least one tensor")
        shape = tuple(first[0].shape)  # the first tensor's dimension 0 is the batch
        if not shape or shape[0] < 1:
            raise InputError(f"tensor shape {shape} has no batch dimension of size >= 1")
        if self.max_batch is not None and shape[0] > self.max_batch:
            raise InputError(f"tensor shape {shape}: batch larger than {self.max_batch}")
        if state.input_spec is not None:
            check_activation(state.input_spec, tensor)

    def submit(
        self,
        client: str,
        kind: str,
        tensor: Activation | None,
        micro: int = 0,
        micros: int = 1,
        optim: list[list] | None = None,
        grads: tuple[bool, ...] | None = None,
    ) -> Future:
        """Check a ``"fwd"`` or ``"bwd"`` task (:meth:`check`) and queue it.

        Parameters
        ----------
        client, kind : str
            The client and ``"fwd"`` or ``"bwd"``.
        tensor : torch.Tensor
            The activation (forward) or the gradient of the output (backward).
        micro, micros : int
            Micro-batch ``micro`` of ``micros`` in the client's batch; the body steps
            after the batch's ``micros``-th backward.
        optim : list, optional
            The client's optimizer events, applied before the task (kind ``"optim"``:
            nothing else); see the module docstring.
        grads : tuple of bool, optional
            A tuple input's gradient flags (default: its floating-point tensors).

        Returns
        -------
        Future
            Resolves to the output tensor (or tuple; see the module docstring).
        """
        self.check(client, kind, tensor, micro, micros, optim)
        if grads is not None and (
            not isinstance(tensor, tuple) or len(grads) != len(tensor)
            or any(g and not t.is_floating_point() for g, t in zip(grads, tensor, strict=True))
        ):
            raise InputError("gradient flags do not fit the tensors (one per floating tensor)")
        future: Future = Future()
        rank = self._rank.get((client, kind), self._unranked)
        with self._cond:
            if self._stopped:
                raise TaskError("helper worker is stopped")
            heapq.heappush(
                self._queue,
                _Task(
                    rank, next(self._seq), time.time(), client, kind, tensor, future,
                    micro, micros, optim, grads,
                ),
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
            state.inputs.clear()
            state.outputs.clear()

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

    def _execute(self, task: _Task) -> Activation | None:
        state = self.bodies.get(task.client)
        if state is None:
            raise TaskError(f"client {task.client!r} was dropped")
        if task.optim is not None:
            state.follow = True
            self._apply_events(state, task.optim)
        if task.kind == "optim":
            return None
        if task.kind == "fwd":
            if state.recompute:
                return steps.forward_lean(state, task.tensor, task.grads)
            return steps.forward(state, task.tensor, task.micro, task.grads)
        if state.recompute:
            return steps.backward_lean(state, task.tensor, self._add_proximal)
        return steps.backward(state, task.tensor, task.micro, task.micros, self._add_proximal)

    def _apply_events(self, state: ClientBody, events: list[list]) -> None:
        """Apply a client's optimizer events to its body, in order."""
        for event in events:
            if event[0] == "zero":
                state.module.zero_grad(set_to_none=True)
                continue
            _, name, hyper = event
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()}
            if state.followed != name:
                cls = optimizer_class(name)
                accepted = inspect.signature(cls).parameters
                try:
                    state.optimizer = cls(
                        state.module.parameters(),
                        **{k: v for k, v in values.items() if k in accepted and k != "params"},
                    )
                except (TypeError, ValueError) as err:
                    raise InputError(f"torch.optim.{name} refused {hyper}: {err}") from None
                state.followed = name
            for group in state.optimizer.param_groups:
                group.update(values)
            self._add_proximal(state)
            state.optimizer.step()

    def _add_proximal(self, state: ClientBody) -> None:
        """Add FedProx's proximal gradient to the body's gradients."""
        if state.anchor is not None:
            self.proximal.add_gradient(list(state.module.parameters()), state.anchor)

def _same_spec(
    clients: Sequence[str], spec: ActivationSpec | None
) -> dict[str, ActivationSpec] | None:
    """The same input spec for every client (``None``: learn each from its first forward)."""
    return dict.fromkeys(clients, spec) if spec is not None else None


#: ``torch.optim`` classes a body can follow; LBFGS needs the loss closure of the client.
_UNFOLLOWABLE = ("LBFGS",)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` optimizer class called ``name``.

    Raises
    ------
    InputError
        If ``torch.optim`` has no such optimizer class or it cannot be followed.
    """
    cls = getattr(torch.optim, name, None)
    if (
        not isinstance(cls, type)
        or not issubclass(cls, torch.optim.Optimizer)
        or cls is torch.optim.Optimizer
        or name in _UNFOLLOWABLE
    ):
        raise InputError(
            f"optimizer {name!r} cannot be followed on the helper: the body follows "
            f"torch.optim optimizers except {', '.join(_UNFOLLOWABLE)}"
        )
    return cls


def _check_followable(state: ClientBody, events: list[list], micros: int) -> None:
    if state.recompute:
        raise TaskError(
            "the client's own training loop drives the body's optimizer, which the "
            "helper's 'shared' memory mode cannot follow (one optimizer for all clients); "
            "use helper-memory='per-client'"
        )
    if micros > 1:
        raise TaskError(
            "the client's own training loop sends whole batches; micro-batches need "
            "flsplit's own loop (micro-batches=1 or no train_fn)"
        )
    for event in events:
        if event[0] == "step":
            optimizer_class(event[1])


@dataclass(frozen=True)
class ProximalTerm:
    """FedProx's proximal term ``mu / 2 * ||w - w0||^2`` (``"squared"``) or
    ``mu / 2 * ||w - w0||`` per tensor (``"norm"``), applied as its gradient."""

    mu: float
    form: str = "squared"

    def __post_init__(self) -> None:
        if self.form not in ("squared", "norm"):
            raise ValueError(f"proximal term {self.form!r} is not 'squared' or 'norm'")

    def add_gradient(self, params: Sequence[torch.Tensor], start: Sequence[torch.Tensor]) -> None:
        """Add the term's gradient at ``params`` to their ``.grad``."""
        if self.mu <= 0:
            return
        with torch.no_grad():
            for param, initial in zip(params, start, strict=True):
                if param.grad is None:
                    continue
                delta = param - initial
                if self.form == "squared":
                    param.grad.add_(delta, alpha=self.mu)
                else:  # d/dw of ||w - w0|| is (w - w0) / ||w - w0|| (0 where w = w0)
                    norm = float(delta.norm())
                    if norm > 0:
                        param.grad.add_(delta, alpha=self.mu / 2 / norm)
