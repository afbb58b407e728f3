"""A client's own training loop on the split model: the body on the helper, driven by
the user's ``loss.backward()`` and ``optimizer.step()``.

:class:`RemoteBody` is a client's side of one round when the app brings its own training
function (``SplitTask(train_fn=...)``). The function gets a
:class:`~flsplit.model.client_view.ClientModel` whose body is :meth:`RemoteBody.__call__`,
an autograd function over the data plane:

- forward: the cut-1 activations go to the helper (``Forward``), the body's output comes
  back and flows into the tail;
- backward (inside the user's ``loss.backward()``): the gradient at cut 2 goes to the
  helper (``Backward``), which adds the body's gradients to its own; the gradient at
  cut 1 comes back and flows into the head.

When several tensors cross the cuts (:mod:`flsplit.model.crossing`) the function takes and
returns tuples: the head's tensors that need a gradient (floating point, requiring one)
are flagged and get gradients back, the others (masks, ids) travel forward only; of the
body's output, the tensors the helper flagged are differentiable, the others are not.

The helper's body follows the client's optimizer. While the round runs, a global
``torch.optim`` step hook sees every ``step()`` of the optimizer that holds the client's
parameters and queues a ``step`` event with the optimizer's class and hyperparameters (the
learning rate a scheduler set included); a ``zero`` event goes with a backward whose head
gradients were cleared since the last one (``optimizer.zero_grad()`` or
``net.zero_grad()``: the body's are cleared with them). The events ride on the next frame
to the helper (the next ``Forward``, ``Backward`` or the round's ``Finish``), which
applies them in order before that frame's task (:mod:`flsplit.runtime.worker`), so
following costs no extra round trip and gradient accumulation over several batches works.
Each step of the unsplit model is then one step of head and tail here and of the body
there, with the same optimizer: the same update as training the full model.

What cannot follow, and is refused with the reason:

- clipping by the global gradient norm (``torch.nn.utils.clip_grad_norm_`` over the
  client's parameters): the norm would need the body's gradients, which stay on the
  helper; so is clipping by value, which the body would not get;
- an optimizer that is not a ``torch.optim`` class (the helper builds the body's
  optimizer by class name, it never imports code it was sent), ``LBFGS`` (its step needs
  the loss closure), several optimizers over the client's parameters, or param groups
  with different hyperparameters (the body follows one set);
- calling the model without autograd (``torch.no_grad()``, e.g. validation inside the
  training function: evaluate in the app's ``evaluate`` handler instead), or calling it
  again before the last output's loss was back-propagated.

Mixed precision with a ``GradScaler`` is not followed either (the body's gradients
would stay scaled); it is not detected.

Stage times for the planner are measured per batch as in flsplit's own loop
(:class:`~flsplit.runtime.trainer.TrainResult`): stage 1 is the head's forward (from the
call of the model's head) and upload, stage 3 everything from the body's output to the
backward's upload (tail, loss, the user's code in between), stage 5 the download, the
head's backward (up to the end of ``loss.backward()``) and the optimizer's steps. The
rest of the time between one batch's backward and the next batch's head forward (its
data loader, whatever the function does between batches and after its last) is the
client's load time (``load_ms``), which the planner adds to the client's stage 1: it makes
the round as long as slow compute would. All are steady-state means
(:class:`~flsplit.runtime.trainer.RoundTotals`): the first batch and the set-up before it
are left out. Emulation stretches the client's compute between the data-plane calls and
hooks, from the first batch's head forward on: the set-up before it (the optimizer, in a
process's first round the imports behind it) runs unstretched.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from flsplit.model import crossing
from flsplit.model.crossing import Activation
from flsplit.runtime.checks import InputError
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import HelperClient, link_nbytes
from flsplit.runtime.trainer import RoundTotals, TrainResult
from flsplit.runtime.worker import optimizer_class


class SplitTrainingError(RuntimeError):
    """The client's training function did something the split model cannot follow."""


class RemoteBody:
    """One client's round of its own training loop through a helper.

    Parameters
    ----------
    helper : HelperClient
        Connection to the helper serving the body.
    head, tail : nn.Module
        The client's parts.
    emulation : Emulation
        Stretches this client's compute and transfers.

    Use it as a context manager around the training function; :meth:`finish` ends the
    round.
    """

    def __init__(
        self,
        helper: HelperClient,
        head: nn.Module,
        tail: nn.Module,
        emulation: Emulation = NO_EMULATION,
    ) -> None:
        self.helper = helper
        self.emulation = emulation
        self.local_ids = {id(p) for p in itertools.chain(head.parameters(), tail.parameters())}
        self.head_params = [p for p in head.parameters() if p.requires_grad]
        self.totals = RoundTotals()
        self.events: list[list] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending = False  # a forward whose backward has not come yet
        self.steps_since_backward = 0
        self.backwards = 0
        self.started = 0.0
        # a leaf that needs a gradient, so the body's backward runs even for a head that
        # has no trainable parameters
        self._anchor = torch.zeros((), requires_grad=True)
        self.head = head
        self._batch: dict[str, float] = {}
        self._span = (0.0, 0.0)
        self._hooks: contextlib.ExitStack | None = None
        # the time between batches: since when (the end of the last batch's backward, or
        # the start of the round), and how much of it went to optimizer steps (stage 5)
        self._gap_start = 0.0
        self._gap_steps = 0.0
        self._step_start: float | None = None

    # -- context ----------------------------------------------------------------------

    def __enter__(self) -> RemoteBody:
        connect = getattr(self.helper, "connect", None)
        if connect is not None:  # the helper coming up is a late start, not network time
            connect()
        stack = contextlib.ExitStack()
        for handle in (
            register_optimizer_step_pre_hook(self._before_step),
            register_optimizer_step_post_hook(self._on_step),
            self.head.register_forward_pre_hook(self._on_head),
        ):
            stack.callback(handle.remove)
        stack.enter_context(_refusing_clipping(self.local_ids))
        self._hooks = stack
        self.started = time.time()
        self._span = (time.perf_counter(), time.process_time())
        self._gap_start, self._gap_steps = self._span[0], 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None

    # -- the body as an autograd function ----------------------------------------------

    def __call__(self, cut1: Activation) -> Activation:
        """The body: ``cut1`` (a tensor or a tuple of tensors) to the helper, its output
        back, differentiable with respect to the tensors that need a gradient."""
        tuple_of_tensors = isinstance(cut1, tuple) and all(
            isinstance(t, torch.Tensor) for t in cut1
        )
        if not isinstance(cut1, torch.Tensor) and not tuple_of_tensors:
            raise SplitTrainingError(
                f"the head's output is a {type(cut1).__name__}, not a tensor or a tuple of "
                "tensors; cut where tensors cross"
            )
        if not torch.is_grad_enabled():
            raise SplitTrainingError(
                "the split model was called without autograd (torch.no_grad() or "
                "inference_mode()): its body trains on the helper, which only runs "
                "training steps; evaluate in the app's evaluate handler instead"
            )
        if self.pending:
            raise SplitTrainingError(
                "the split model was called again before the loss of its last output was "
                "back-propagated; call loss.backward() once per call of the model"
            )
        if isinstance(cut1, torch.Tensor):  # its gradient always comes back, as before
            return _BodyFunction.apply(self._anchor, self, (True,), True, cut1)
        flags = crossing.needs_grad(cut1)
        return _BodyFunction.apply(self._anchor, self, flags, False, *cut1)

    def forward(self, cut1: Activation) -> Activation:
        """Send ``cut1``; return the body's output on ``cut1``'s device (a tuple: the
        tensors the helper flagged require a gradient)."""
        # stretches the head's forward (or all since the last batch; not the set-up)
        now = self._end_span(stretch=not self._setting_up())
        if not self._head_ran():  # the body called without the head: the gap ends here
            self._start_batch(now)
        self.emulation.transfer(link_nbytes(self.helper, "fwd", cut1))
        t1 = time.perf_counter()
        sent = cut1.detach() if isinstance(cut1, torch.Tensor) else cut1
        out = self.helper.forward(sent, optim=self._take_events())
        self._batch.update(
            t1=t1, t2=time.perf_counter(), fwd_net=self.helper.last_network_seconds,
            fwd_service=self.helper.last_service_seconds,
            examples=float(crossing.batch_size(cut1)),
        )
        self.emulation.transfer(link_nbytes(self.helper, "fwd", out))
        self.pending = True
        self._span = (time.perf_counter(), time.process_time())
        device = crossing.as_tuple(cut1)[0].device
        if isinstance(out, torch.Tensor):
            return out.to(device, non_blocking=device.type == "cuda")
        flags = crossing.needs_grad(out)
        moved = crossing.to_device(out, device, non_blocking=device.type == "cuda")
        return crossing.detach_inputs(moved, flags)

    def backward(self, grad: Activation, like: Activation) -> Activation:
        """Send the gradient(s) at cut 2; return the gradient(s) at cut 1, each shaped as
        its ``like``."""
        self._end_span()
        events = self._take_events()
        if self._gradients_cleared():
            events.append(["zero"])
        self.emulation.transfer(link_nbytes(self.helper, "bwd", grad))
        t3 = time.perf_counter()
        sent = grad.contiguous() if isinstance(grad, torch.Tensor) else grad
        grad_cut1 = self.helper.backward(sent, optim=events)
        self._batch.update(
            t3=t3, t4=time.perf_counter(), bwd_net=self.helper.last_network_seconds,
            bwd_service=self.helper.last_service_seconds,
        )
        self.emulation.transfer(link_nbytes(self.helper, "bwd", grad_cut1))
        self.pending = False
        self.backwards += 1
        self.steps_since_backward = 0
        self._span = (time.perf_counter(), time.process_time())
        self._gap_start, self._gap_steps = self._span[0], 0.0
        # the head's backward goes on after this returns: stage 5 ends with it (outside an
        # autograd backward, called directly, it ends here)
        with contextlib.suppress(AttributeError, RuntimeError):
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
        if isinstance(like, torch.Tensor):
            return grad_cut1.to(device=like.device, dtype=like.dtype)
        got = crossing.as_tuple(grad_cut1)
        if len(got) != len(like):
            raise SplitTrainingError(
                f"the helper answered {len(got)} gradients for {len(like)} tensors of the "
                "head's output that need one"
            )
        return tuple(
            g.to(device=t.device, dtype=t.dtype) for g, t in zip(got, like, strict=True)
        )

    # -- the end of the round -----------------------------------------------------------

    def finish(self) -> TrainResult:
        """Send the last optimizer events with ``Finish``; return the round's figures.

        Raises
        ------
        SplitTrainingError
            If the model was never called, or its last output never back-propagated.
        """
        now = self._end_span()
        if self.pending:
            raise SplitTrainingError(
                "the training function returned with the model's last output not "
                "back-propagated; the helper still waits for its gradient"
            )
        if self.backwards == 0:
            raise SplitTrainingError(
                "the training function never trained the model it was given (no batch "
                "went forward and backward through it); it must call the model it receives "
                "as its first argument, not one of its own"
            )
        self._close_batch(now)
        self.helper.finish(optim=self._take_events())
        return self.totals.result(self.started)

    # -- the time between batches (hooks) -----------------------------------------------

    def _on_head(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook of the head: the next batch starts, the gap before it ends."""
        if self._hooks is None or self.pending or self._head_ran():
            return
        self._start_batch(self._end_span(stretch=not self._setting_up()))

    def _head_ran(self) -> bool:
        """Whether the head already ran for a batch whose body has not run yet."""
        return "th" in self._batch and "t1" not in self._batch

    def _backward_done(self) -> None:
        """Runs when ``loss.backward()`` is done: the head's backward ends stage 5's
        compute; what follows, up to the next head forward, is the gap."""
        if self._hooks is None or "t4" not in self._batch:
            return
        now = self._end_span()
        self._batch["tb"] = now
        self._gap_start, self._gap_steps = now, 0.0

    def _before_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if self._holds(optimizer) and not self.pending:
            self._step_start = self._end_span()  # what ran before the step is the gap's

    def _start_batch(self, now: float) -> None:
        """Close the last batch with the gap that ends ``now``; a new batch starts."""
        self._close_batch(now)
        self._batch = {"th": now}

    # -- internals ----------------------------------------------------------------------

    def _holds(self, optimizer: torch.optim.Optimizer) -> bool:
        return any(
            id(p) in self.local_ids for g in optimizer.param_groups for p in g["params"]
        )

    def _on_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Global step hook: queue a step of the optimizer holding the client's weights
        (and count its time to the last batch's stage 5)."""
        held = [
            g for g in optimizer.param_groups
            if any(id(p) in self.local_ids for p in g["params"])
        ]
        if not held:
            return
        if self._step_start is not None:
            self._gap_steps += self._end_span() - self._step_start
            self._step_start = None
        if self.optimizer is None:
            self.optimizer = optimizer
        elif self.optimizer is not optimizer:
            raise SplitTrainingError(
                "two optimizers step the split model's parameters; the body on the helper "
                "follows one optimizer (put head and tail in one)"
            )
        self.events.append(["step", followable_name(optimizer), hyperparameters(held)])
        self.steps_since_backward += 1

    def _gradients_cleared(self) -> bool:
        """Whether the client's gradients were cleared since the last backward, which the
        body's must follow (judged on the head, whose gradients this backward has not
        reached yet; without trainable head weights: cleared after every step)."""
        if self.backwards == 0:
            return True
        if not self.head_params:
            return self.steps_since_backward > 0
        return all(p.grad is None or not bool(p.grad.any()) for p in self.head_params)

    def _take_events(self) -> list[list]:
        events, self.events = self.events, []
        return events

    def _setting_up(self) -> bool:
        """Whether no batch has started yet: the training function is setting up (its
        optimizer, its loader's first iterator; in a process's first round the imports
        and first calls behind them, seconds of CPU)."""
        return self.backwards == 0 and not self._batch

    def _end_span(self, stretch: bool = True) -> float:
        """Stretch the client's compute since the last data-plane call or hook
        (emulation), so each stretch counts to the stage (or gap) whose compute it is.
        The set-up before the first batch is not stretched (``stretch=False``): a device
        preset's factors are per-layer training costs, and stretching a process's one-off
        imports by them (30x for a Raspberry Pi) delayed a first round by a minute."""
        if stretch:
            self.emulation.stretch(*self._span)
        self._span = (time.perf_counter(), time.process_time())
        return self._span[0]

    def _close_batch(self, now: float) -> None:
        """Add the finished batch (if any) to the totals and the gap that ends ``now``
        to the load time: stage 5 is the download, the head's backward and the optimizer
        steps since; the rest of the gap is loading (the first batch's gap included)."""
        b = self._batch
        gap = max(now - self._gap_start - self._gap_steps, 0.0)
        if "t4" in b:
            backward_end = b.get("tb", b["t4"])
            self.totals.add(
                int(b["examples"]),
                0.0,
                0,
                (
                    (b["t1"] - b["th"]) + b["fwd_net"] / 2,
                    b["fwd_net"] / 2 + (b["t3"] - b["t2"]) + b["bwd_net"] / 2,
                    b["bwd_net"] / 2 + (backward_end - b["t4"]) + self._gap_steps,
                ),
                b["fwd_service"] + b["bwd_service"],
                ended=backward_end,
            )
            self._batch = {}
        if "t4" in b or self.backwards == 0:  # the gap before the first batch too
            self.totals.add_load(gap)
        self._gap_start, self._gap_steps = now, 0.0


class _BodyFunction(torch.autograd.Function):
    """The body on the helper as one autograd node: ``apply(anchor, body, flags, bare,
    *tensors)`` returns the body's output (a tensor or a tuple); gradients flow to the
    flagged inputs from the outputs that need one. ``bare``: the one input tensor crosses
    the cut as a tensor, not as a tuple."""

    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, body: RemoteBody, flags: tuple[bool, ...],
        bare: bool, *tensors: torch.Tensor,
    ) -> Any:
        ctx.body, ctx.flags, ctx.bare = body, flags, bare
        # only the dtype and device of the flagged inputs shape their gradients
        ctx.save_for_backward(*(
            torch.empty(0, dtype=t.dtype, device=t.device)
            for t in crossing.flagged(tensors, flags)
        ))
        out = body.forward(tensors[0] if bare else crossing.detach_inputs(tensors, flags))
        outs = crossing.as_tuple(out)
        ctx.out_flags = crossing.needs_grad(out)
        ctx.single = isinstance(out, torch.Tensor)
        if ctx.single:
            ctx.out_flags = (True,)
        result = tuple(t.detach() for t in outs)
        ctx.mark_non_differentiable(
            *(t for t, f in zip(result, ctx.out_flags, strict=True) if not f)
        )
        return result[0] if ctx.single else result

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        likes = ctx.saved_tensors
        sent = tuple(g.contiguous() for g, f in zip(grads, ctx.out_flags, strict=True) if f)
        back = ctx.body.backward(sent[0] if ctx.single else sent, likes[0] if ctx.bare else likes)
        back = iter(crossing.as_tuple(back))
        return (None, None, None, None, *(next(back) if f else None for f in ctx.flags))


def followable_name(optimizer: torch.optim.Optimizer) -> str:
    """The ``torch.optim`` class name the helper builds to follow ``optimizer``.

    Raises
    ------
    SplitTrainingError
        If ``optimizer`` is not an instance of a ``torch.optim`` class the helper follows.
    """
    name = type(optimizer).__name__
    try:
        cls = optimizer_class(name)
    except InputError as err:
        raise SplitTrainingError(str(err)) from None
    if type(optimizer) is not cls:
        raise SplitTrainingError(
            f"optimizer {type(optimizer).__module__}.{name} is not torch.optim.{name}; the "
            "body on the helper follows torch.optim optimizers only"
        )
    return name


def hyperparameters(groups: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The hyperparameters of ``groups`` (all the same) as JSON values for the helper.

    Raises
    ------
    SplitTrainingError
        If the groups differ, or a value cannot travel (not a number, bool, ``None`` or a
        short sequence of numbers).
    """
    settings = [
        {k: _plain(k, v) for k, v in group.items() if k != "params"} for group in groups
    ]
    first = settings[0]
    for other in settings[1:]:
        if other != first:
            differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise SplitTrainingError(
                f"the optimizer's param groups differ in {', '.join(differ)}; the body on the "
                "helper follows one set of hyperparameters, so give head and tail the same"
            )
    return first


def _plain(key: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple) and len(value) <= 4:
        items = [v.item() if isinstance(v, torch.Tensor) else v for v in value]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            return items
    raise SplitTrainingError(
        f"optimizer setting {key}={value!r:.60} cannot be sent to the helper (numbers, bools "
        "and short lists of numbers can)"
    )


_CLIPPING = ("clip_grad_norm_", "clip_grad_value_")
_clipping_lock = threading.Lock()
_active: list[set[int]] = []  # the parameter ids of every round in progress
_originals: dict[tuple[Any, str], Any] = {}


@contextlib.contextmanager
def _refusing_clipping(local_ids: set[int]) -> Iterator[None]:
    """While the round runs, make torch's gradient-clipping functions refuse the client's
    parameters (other calls go through unchanged). Installed once for all rounds in
    progress in the process, so concurrent rounds do not undo each other's."""
    with _clipping_lock:
        if not _active:
            for owner in (torch.nn.utils, torch.nn.utils.clip_grad):
                for name in _CLIPPING:
                    original = getattr(owner, name)
                    _originals[(owner, name)] = original
                    setattr(owner, name, _refuser(name, original))
        _active.append(local_ids)
    try:
        yield
    finally:
        with _clipping_lock:
            _active.remove(local_ids)
            if not _active:
                for (owner, name), original in _originals.items():
                    setattr(owner, name, original)
                _originals.clear()


def _refuser(name: str, original: Any) -> Any:
    def refuse(parameters: Any, *args: Any, **kwargs: Any) -> Any:
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        if any(id(p) in ids for ids in list(_active) for p in params):
            raise SplitTrainingError(
                f"torch.nn.utils.{name} over the split model's parameters cannot include "
                "the body's gradients, which stay on the helper; train without gradient "
                "clipping, or with flsplit's own loop"
            )
        return original(params, *args, **kwargs)

    return refuse
