"""What a tensor must look like for a helper to accept it.

The asynchronous worker, the chain relay and the synchronous-step worker all refuse a
tensor that does not fit before they touch any state; they share these checks so that a
client sees the same message, naming the field, whichever path refused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flsplit.model.crossing import Activation, as_tuple


class InputError(ValueError):
    """A tensor that does not fit what the client's body expects; the message names the
    field (``tensor shape``, ``tensor dtype``)."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape (without the batch dimension) and dtype of a body's input."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def check(self, tensor: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``tensor`` is a batch of this spec."""
        shape = tuple(tensor.shape)
        if shape[1:] != self.shape:
            raise InputError(
                f"tensor shape {shape} does not fit the body input (batch, "
                f"{', '.join(map(str, self.shape))})"
            )
        if tensor.dtype != self.dtype:
            raise InputError(f"tensor dtype {tensor.dtype} is not the body input's {self.dtype}")


def check_gradient(
    grad: torch.Tensor,
    shape: Sequence[int],
    dtype: torch.dtype,
    expected: str = "the body output shape",
) -> None:
    """Raise :class:`InputError` unless ``grad`` can be the gradient of an output.

    Parameters
    ----------
    grad : torch.Tensor
        The gradient a client sent.
    shape : Sequence[int]
        The exact shape the gradient must have (batch included).
    dtype : torch.dtype
        The dtype of the output it is the gradient of.
    expected : str
        What ``shape`` is, for the message (e.g. ``"the body output shape"``).

    Raises
    ------
    InputError
        Shape first, then dtype: ``tensor shape ... of the gradient does not match
        <expected> ...`` or ``tensor dtype ... of the gradient is not the body
        output's ...``.
    """
    if tuple(grad.shape) != tuple(shape):
        raise InputError(
            f"tensor shape {tuple(grad.shape)} of the gradient does not match {expected} "
            f"{tuple(shape)}"
        )
    if grad.dtype != dtype:
        raise InputError(
            f"tensor dtype {grad.dtype} of the gradient is not the body output's {dtype}"
        )


#: What a body takes: the spec of one tensor, or one spec per tensor of a tuple.
ActivationSpec = TensorSpec | tuple[TensorSpec, ...]


def spec_of(activation: Activation) -> ActivationSpec:
    """The spec of a batch (batch dimension left out): a :class:`TensorSpec` for a tensor,
    a tuple of them for a tuple of tensors."""
    if isinstance(activation, torch.Tensor):
        return TensorSpec(tuple(activation.shape[1:]), activation.dtype)
    return tuple(TensorSpec(tuple(t.shape[1:]), t.dtype) for t in activation)


def check_activation(spec: ActivationSpec, activation: Activation) -> None:
    """Raise :class:`InputError` unless ``activation`` is a batch of ``spec``: as many
    tensors, each of its spec (the message names the tensor's index)."""
    if isinstance(spec, TensorSpec):
        if not isinstance(activation, torch.Tensor):
            raise InputError(
                f"{len(activation)} tensors arrived; the body input is one tensor"
            )
        spec.check(activation)
        return
    tensors = as_tuple(activation)
    if isinstance(activation, torch.Tensor) or len(tensors) != len(spec):
        raise InputError(
            f"{'one tensor' if isinstance(activation, torch.Tensor) else len(tensors)} "
            f"arrived; the body input is {len(spec)} tensors"
        )
    for i, (one, tensor) in enumerate(zip(spec, tensors, strict=True)):
        try:
            one.check(tensor)
        except InputError as err:
            raise InputError(f"tensors[{i}]: {err}") from None


def check_gradients(
    grads: Activation, outputs: Activation, expected: str = "the body output"
) -> None:
    """Raise :class:`InputError` unless ``grads`` can be the gradients of ``outputs``: a
    tensor for a tensor output (:func:`check_gradient`); for a tuple, one gradient per
    tensor of it that needs one, in order, each of its shape and dtype.

    ``outputs`` are what was sent (the tensors that need a gradient require one).
    """
    if isinstance(outputs, torch.Tensor):
        if not isinstance(grads, torch.Tensor):
            raise InputError(
                f"{len(grads)} gradients arrived; {expected} is one tensor"
            )
        check_gradient(grads, outputs.shape, outputs.dtype, f"{expected} shape")
        return
    wanted = [(i, t) for i, t in enumerate(outputs) if t.is_floating_point() and t.requires_grad]
    given = as_tuple(grads)
    if len(given) != len(wanted):
        raise InputError(
            f"{len(given)} gradients arrived; {len(wanted)} tensors of {expected} need one "
            f"(tensors {[i for i, _ in wanted]})"
        )
    for (i, out), grad in zip(wanted, given, strict=True):
        check_gradient(grad, out.shape, out.dtype, f"{expected} tensors[{i}] shape")
