"""What a tensor must look like for a helper to accept it.

The asynchronous worker, the chain relay and the synchronous-step worker all refuse a
tensor that does not fit before they touch any state; they share these checks so that a
client sees the same message, naming the field, whichever path refused it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
