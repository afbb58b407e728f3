"""What crosses a cut: one tensor, or a tuple of tensors, and the helpers that handle both.

An :data:`Activation` is what one part hands the next: a bare ``torch.Tensor`` when one
value crosses the cut (exactly as before tuples existed) or a ``tuple`` of tensors when
several do (a hidden state, an attention mask, position ids, ...). A part ``i > 0`` is
called ``part(*activation)`` for a tuple and ``part(activation)`` for a tensor
(:func:`call_part`). The head takes the batch's :data:`Inputs`: a tensor or a mapping of
named tensors (Hugging Face style).

Differentiability. In a training forward the crossing tensors that need a gradient are the
floating-point ones that require one on the sender's side (:func:`needs_grad`). The
receiver detaches every input and makes only the flagged ones require a gradient
(:func:`detach_inputs`); a backward sends the gradients of the flagged tensors only, in
order (:func:`backward`, :func:`flagged`).

Batches. Dimension 0 of the first tensor is the batch (:func:`batch_size`). A tensor whose
dimension 0 is not the batch (a ``[1, T, D]`` rotary table broadcast over the batch, a
0-dimensional scalar) is not split by :func:`chunk`: every chunk carries it whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

#: What crosses a cut: one tensor, or several.
Activation = torch.Tensor | tuple[torch.Tensor, ...]
#: A batch's inputs as the head takes them: a tensor or named tensors.
Inputs = torch.Tensor | Mapping[str, torch.Tensor]

__all__ = [
    "Activation",
    "Inputs",
    "as_tuple",
    "backward",
    "batch_size",
    "call_part",
    "cat",
    "chunk",
    "detach_inputs",
    "flagged",
    "nbytes",
    "needs_grad",
    "to_device",
    "unpack",
]


def as_tuple(activation: Activation) -> tuple[torch.Tensor, ...]:
    """``activation`` as a tuple of tensors (a bare tensor becomes a 1-tuple)."""
    if isinstance(activation, torch.Tensor):
        return (activation,)
    return tuple(activation)


def unpack(tensors: Sequence[torch.Tensor]) -> Activation:
    """The activation of ``tensors``: the tensor itself when there is one, else a tuple."""
    if isinstance(tensors, torch.Tensor):
        return tensors
    items = tuple(tensors)
    return items[0] if len(items) == 1 else items


def call_part(part: Callable[..., Any], activation: Activation) -> Any:
    """Call a part ``i > 0`` on what crosses its cut: ``part(*activation)`` for a tuple,
    ``part(activation)`` for a tensor."""
    if isinstance(activation, tuple):
        return part(*activation)
    return part(activation)


def needs_grad(activation: Activation) -> tuple[bool, ...]:
    """Per tensor: whether it needs a gradient (floating point and ``requires_grad``)."""
    return tuple(t.is_floating_point() and t.requires_grad for t in as_tuple(activation))


def detach_inputs(activation: Activation, flags: Sequence[bool] | None = None) -> Activation:
    """Detached copies of the received tensors, the flagged ones requiring a gradient.

    Parameters
    ----------
    activation : Activation
        What arrived.
    flags : sequence of bool, optional
        Per tensor, whether it needs a gradient. Without flags every floating-point
        tensor does (a bare tensor's behaviour before flags existed).

    Returns
    -------
    Activation
        Leaves of the same structure (a tensor stays a tensor).

    Raises
    ------
    ValueError
        If ``flags`` does not have one entry per tensor, or flags a tensor that is not
        floating point.
    """
    tensors = as_tuple(activation)
    if flags is None:
        flags = [t.is_floating_point() for t in tensors]
    if len(flags) != len(tensors):
        raise ValueError(f"{len(flags)} gradient flags for {len(tensors)} tensors")
    out = []
    for i, (tensor, flag) in enumerate(zip(tensors, flags, strict=True)):
        if flag and not tensor.is_floating_point():
            raise ValueError(f"tensor {i} of dtype {tensor.dtype} cannot need a gradient")
        leaf = tensor.detach()
        out.append(leaf.requires_grad_(True) if flag else leaf)
    return out[0] if isinstance(activation, torch.Tensor) else tuple(out)


def flagged(activation: Activation, flags: Sequence[bool]) -> tuple[torch.Tensor, ...]:
    """The tensors of ``activation`` whose flag is set, in order."""
    return tuple(t for t, f in zip(as_tuple(activation), flags, strict=True) if f)


def backward(outputs: Activation, grads: Activation | Sequence[torch.Tensor]) -> None:
    """Back-propagate the gradients of the outputs that need one.

    Parameters
    ----------
    outputs : Activation
        What a part returned (not detached).
    grads : Activation
        The gradients of the outputs that need one (:func:`needs_grad`), in order; each
        is cast to its output's dtype and device.

    Raises
    ------
    ValueError
        If there are not as many gradients as outputs that need one.
    """
    targets = flagged(outputs, needs_grad(outputs))
    gradients = as_tuple(grads) if isinstance(grads, torch.Tensor) else tuple(grads)
    if len(gradients) != len(targets):
        raise ValueError(
            f"{len(gradients)} gradients for {len(targets)} outputs that need one"
        )
    if not targets:
        return
    if len(targets) == 1:  # the call a single tensor always made (bit-identical)
        targets[0].backward(gradients[0].to(device=targets[0].device, dtype=targets[0].dtype))
        return
    cast = [g.to(device=t.device, dtype=t.dtype) for t, g in zip(targets, gradients, strict=True)]
    torch.autograd.backward(targets, cast)


def to_device(value: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``value`` (a tensor, a tuple of tensors or a mapping of them) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(to_device(v, device, non_blocking) for v in value)
    return value


def batch_size(inputs: Any) -> int:
    """Dimension 0 of the first tensor of ``inputs`` (a tensor, tuple or mapping).

    Raises
    ------
    ValueError
        If ``inputs`` holds no tensor with at least one dimension.
    """
    for tensor in _tensors(inputs):
        if tensor.dim() >= 1:
            return int(tensor.shape[0])
    raise ValueError("the inputs hold no tensor with a batch dimension")


def chunk(value: Any, n: int) -> list[Any]:
    """Split ``value`` along dimension 0 into at most ``n`` chunks, as ``torch.chunk``.

    A tuple or mapping is split per tensor; a tensor whose dimension 0 is not the batch
    (:func:`batch_size`) goes whole into every chunk. A bare tensor gives the very views
    ``tensor.split(ceil(len / n))`` gives.
    """
    if n < 1:
        raise ValueError(f"cannot split into {n} chunks")
    batch = batch_size(value)
    size = max(math.ceil(batch / n), 1)
    count = max(math.ceil(batch / size), 1)

    def split(tensor: torch.Tensor) -> Sequence[torch.Tensor]:
        if tensor.dim() >= 1 and tensor.shape[0] == batch:
            return tensor.split(size)
        return [tensor] * count

    if isinstance(value, torch.Tensor):
        return list(split(value))
    if isinstance(value, Mapping):
        pieces = {k: split(v) if isinstance(v, torch.Tensor) else [v] * count
                  for k, v in value.items()}
        return [{k: p[i] for k, p in pieces.items()} for i in range(count)]
    columns = [split(t) for t in value]
    return [tuple(c[i] for c in columns) for i in range(count)]


def cat(items: Sequence[Any]) -> Any:
    """Concatenate chunks along dimension 0: tensors, tuples per position, mappings per
    key (the inverse of :func:`chunk` for tensors that were split)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(items))
    if isinstance(first, Mapping):
        return {k: cat([item[k] for item in items]) for k in first}
    return tuple(cat([item[i] for item in items]) for i in range(len(first)))


def nbytes(value: Any) -> int:
    """Bytes of the elements of every tensor in ``value`` (what they take on the wire)."""
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [v for v in value.values() if isinstance(v, torch.Tensor)]
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []
