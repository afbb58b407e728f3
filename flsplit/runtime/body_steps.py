"""One client body's forward and backward steps on a helper.

:class:`~flsplit.runtime.worker.HelperWorker` decides which task runs when; the functions
here run it on a client's :class:`ClientBody`: :func:`forward` and :func:`backward` keep
the autograd graph between them (``"per-client"`` memory mode, micro-batches accumulated
to one step per batch); :func:`forward_lean` and :func:`backward_lean` keep only the input
and recompute the forward at backward time (``"shared"`` mode). The worker's module
docstring says what each step equals.

What crosses a cut may be a tensor or a tuple of tensors (:mod:`flsplit.model.crossing`):
the body is called ``body(*inputs)`` with only the flagged inputs requiring a gradient; a
tuple output is answered with its tensors detached, those that need a gradient flagged
(fresh leaves requiring one); the backward takes the gradients of the flagged outputs and
answers with the gradients of the flagged inputs, in order. A tensor is handled exactly
as before tuples existed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from flsplit.model.crossing import (
    Activation,
    as_tuple,
    batch_size,
    call_part,
    detach_inputs,
    flagged,
    needs_grad,
)
from flsplit.model.crossing import backward as backward_outputs
from flsplit.runtime.checks import ActivationSpec, spec_of


class TaskError(RuntimeError):
    """A task that cannot be run for the client that sent it."""


@dataclass
class ClientBody:
    """One client's copy of the body and its training state.

    ``inputs`` and ``outputs`` hold the pending forward of each micro-batch in flight
    (key: micro-batch index, ``0`` for a whole batch); ``accumulated`` counts the
    backward tasks whose gradients the current batch has gathered so far.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: dict[int, Activation] = field(default_factory=dict)
    outputs: dict[int, Activation] = field(default_factory=dict)
    input_spec: ActivationSpec | None = None
    recompute: bool = False
    rng_state: tuple[torch.Tensor, torch.Tensor | None] | None = None
    accumulated: int = 0
    follow: bool = False
    followed: str | None = None
    anchor: list[torch.Tensor] | None = None
    batches: int = 0
    examples: int = 0
    busy_seconds: float = 0.0

    @property
    def pending_input(self) -> Activation | None:
        """Input of the pending forward of a whole batch (micro-batch 0)."""
        return self.inputs.get(0)

    @property
    def pending_output(self) -> Activation | None:
        """Output of the pending forward of a whole batch (micro-batch 0)."""
        return self.outputs.get(0)


def forward_lean(
    state: ClientBody, activation: Activation, grads: tuple[bool, ...] | None = None
) -> Activation:
    inp = _to_module(activation, state.module)
    inp = inp.detach() if isinstance(inp, torch.Tensor) else detach_inputs(inp, grads)
    device = as_tuple(inp)[0].device
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    state.rng_state = (torch.get_rng_state(), cuda)
    if isinstance(inp, torch.Tensor):
        with torch.no_grad():
            out = state.module(inp)
        meta = torch.empty(out.shape, dtype=out.dtype, device="meta")
    else:
        # which outputs need a gradient shows only with autograd on: the graph is
        # built and dropped at once (the memory of one forward, for this task only)
        with torch.enable_grad():
            out = call_part(state.module, inp)
        meta = _meta(out)
        out = _sendable(out)
    # keep the input only; the output's shape and dtype live on the meta device
    state.inputs[0] = inp
    state.outputs[0] = meta
    if state.input_spec is None:
        state.input_spec = spec_of(inp)
    return out

def backward_lean(
    state: ClientBody,
    grad_output: Activation,
    before_step: Callable[[ClientBody], None] = lambda state: None,
) -> Activation:
    saved, meta = state.pending_input, state.pending_output
    if saved is None or meta is None or state.rng_state is None:
        raise TaskError("backward task without a preceding forward task")
    if isinstance(meta, torch.Tensor) and tuple(grad_output.shape) != tuple(meta.shape):
        raise TaskError(
            f"gradient shape {tuple(grad_output.shape)} does not match the body output "
            f"shape {tuple(meta.shape)}"
        )
    module = state.module
    grad_output = _to_module(grad_output, module)
    if isinstance(saved, torch.Tensor):
        inp: Activation = saved.detach().requires_grad_(True)
    else:
        inp = detach_inputs(saved, [t.requires_grad for t in saved])
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    cpu_rng, cuda_rng = state.rng_state
    devices = [as_tuple(inp)[0].device] if cuda_rng is not None else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, devices[0])
        out = call_part(module, inp)
    state.optimizer.zero_grad(set_to_none=True)
    backward_outputs(out, grad_output)
    del out
    with torch.no_grad():  # the forward task already updated them (after backward:
        for buffer, value in buffers:  # autograd may have saved them)
            buffer.copy_(value)
    before_step(state)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.inputs.clear()
    state.outputs.clear()
    state.rng_state = None
    state.batches += 1
    state.examples += batch_size(inp)
    return _input_grads(inp)

def forward(
    state: ClientBody,
    activation: Activation,
    micro: int = 0,
    grads: tuple[bool, ...] | None = None,
) -> Activation:
    inp = _to_module(activation, state.module)
    if isinstance(inp, torch.Tensor):
        inp = inp.detach().requires_grad_(True)
    else:
        inp = detach_inputs(inp, grads)
    with torch.enable_grad():
        out = call_part(state.module, inp)
    state.inputs[micro], state.outputs[micro] = inp, out
    if state.input_spec is None:
        state.input_spec = spec_of(inp)
    return _sendable(out)

def backward(
    state: ClientBody,
    grad_output: Activation,
    micro: int = 0,
    micros: int = 1,
    before_step: Callable[[ClientBody], None] = lambda state: None,
) -> Activation:
    inp, out = state.inputs.get(micro), state.outputs.get(micro)
    if out is None or inp is None:
        raise TaskError("backward task without a preceding forward task")
    if isinstance(out, torch.Tensor) and tuple(grad_output.shape) != tuple(out.shape):
        raise TaskError(
            f"gradient shape {tuple(grad_output.shape)} does not match the body output "
            f"shape {tuple(out.shape)}"
        )
    device = as_tuple(out)[0].device
    grad_output = _to_device(grad_output, device)
    if state.follow:  # the client's optimizer events zero and step the body
        backward_outputs(out, grad_output)
        del state.inputs[micro], state.outputs[micro]
        state.examples += batch_size(inp)
        state.batches += 1
        return _input_grads(inp)
    if state.accumulated == 0:  # the batch's first backward: start from no gradient
        state.optimizer.zero_grad(set_to_none=True)
    backward_outputs(out, grad_output)
    del state.inputs[micro], state.outputs[micro]
    state.accumulated += 1
    state.examples += batch_size(inp)
    if state.accumulated >= micros:  # the batch's last micro-batch: one step
        before_step(state)
        state.optimizer.step()
        state.accumulated = 0
        state.batches += 1
    return _input_grads(inp)


def _sendable(out: Activation) -> Activation:
    """A part's output as it is answered: detached; in a tuple the tensors that need a
    gradient are flagged (fresh leaves requiring one, so the frame's flags say so)."""
    if isinstance(out, torch.Tensor):
        return out.detach()
    if not isinstance(out, tuple) or not all(isinstance(t, torch.Tensor) for t in out):
        raise TaskError(
            f"the body returned a {type(out).__name__}, not a tensor or a tuple of tensors"
        )
    return detach_inputs(out, needs_grad(out))


def _meta(out: Activation) -> Activation:
    """Shape, dtype and gradient need of ``out`` on the meta device."""
    return tuple(
        torch.empty(t.shape, dtype=t.dtype, device="meta").requires_grad_(flag)
        for t, flag in zip(as_tuple(out), needs_grad(out), strict=True)
    )


def _input_grads(inp: Activation) -> Activation:
    """The gradients of the inputs that needed one (zeros where none reached them): the
    tensor's for a tensor, a tuple of the flagged ones' for a tuple."""
    if isinstance(inp, torch.Tensor):
        return inp.grad if inp.grad is not None else torch.zeros_like(inp)
    return tuple(
        t.grad if t.grad is not None else torch.zeros_like(t)
        for t in flagged(inp, [t.requires_grad for t in inp])
    )


def _to_device(value: Activation, device: torch.device) -> Activation:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, non_blocking=device.type == "cuda")
    return tuple(_to_device(t, device) for t in value)


def _to_module(tensor: Activation, module: nn.Module) -> Activation:
    """``tensor`` (or each of a tuple) on the device of ``module``'s weights (tensors
    arrive on the CPU)."""
    if isinstance(tensor, tuple):
        return tuple(_to_module(t, module) for t in tensor)
    weight = next(itertools.chain(module.parameters(), module.buffers()), None)
    if weight is None or weight.device == tensor.device:
        return tensor
    if weight.is_cuda:  # pinned host memory lets the copy overlap
        return tensor.pin_memory().to(weight.device, non_blocking=True)
    return tensor.to(weight.device)
