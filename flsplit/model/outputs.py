"""What the loss and the accuracy read of a model's output.

The last part of a split model (and the unsplit model) may return a tensor of logits, a
tuple whose first element is the logits, or a ``transformers`` ``ModelOutput`` with a
``.logits`` field. :func:`logits_of` finds the logits in each; the loss function is given
them. :func:`correct_count` counts right predictions for classification logits
``[B, C]`` against labels ``[B]`` and for token logits ``[B, T, V]`` against labels
``[B, T]`` alike.
"""

from __future__ import annotations

from typing import Any

import torch

#: Label value that marks a position the loss and the accuracy skip (``cross_entropy``'s
#: default ``ignore_index``, and Hugging Face's padding of labels).
IGNORE_INDEX = -100


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output.

    Parameters
    ----------
    output : Tensor, tuple or object with ``.logits``
        What the model (or the last part) returned.

    Returns
    -------
    torch.Tensor
        A tensor itself; ``output.logits`` (a ``transformers`` ``ModelOutput``); the
        first element of a tuple or list.

    Raises
    ------
    TypeError
        If none of these holds a tensor.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: return a "
        "tensor, a tuple starting with the logits, or an object with .logits"
    )


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Right predictions of ``logits`` for ``labels``, counted per example.

    The prediction is the arg-max over the last dimension when
    ``logits.shape[:-1] == labels.shape`` (``[B, C]`` vs ``[B]``, ``[B, T, V]`` vs
    ``[B, T]``), else over dimension 1 (``[B, C, H, W]`` vs ``[B, H, W]``). Labels equal
    to :data:`IGNORE_INDEX` are skipped. An example with one label counts 1 when it is
    right; an example with several (tokens, pixels) counts the fraction of its counted
    labels that are right (0 if none is counted), so that the sum over a data set divided
    by its examples stays an accuracy in ``[0, 1]``.

    Returns
    -------
    float
        The count (an integer value for one label per example); 0 when the predictions
        do not have the labels' shape.
    """
    logits = logits.detach()
    if logits.dim() == 0 or labels.dim() == 0:
        return 0.0
    dim = -1 if tuple(logits.shape[:-1]) == tuple(labels.shape) else 1
    if dim == 1 and logits.dim() < 2:
        return 0.0
    predictions = logits.argmax(dim=dim)
    if predictions.shape != labels.shape:
        return 0.0
    labels = labels.to(predictions.device)
    counted = labels != IGNORE_INDEX
    right = (predictions == labels) & counted
    if labels.dim() == 1:
        return float(int(right.sum()))
    right = right.reshape(labels.shape[0], -1).sum(dim=1)
    total = counted.reshape(labels.shape[0], -1).sum(dim=1)
    fractions = right.double() / total.clamp(min=1).double()
    return float(fractions.sum())
