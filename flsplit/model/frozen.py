"""A frozen base: the parameters a model does not train (``requires_grad=False``).

Parameter-efficient fine-tuning (LoRA adapters from ``peft``, or hand-made ones) trains a
few small tensors on top of a large base the user froze in ``SplitTask.model_fn``. The
base never changes, so it travels to a node once per run and is never aggregated; only
the trainable tensors (and buffers, which are not parameters) travel every round.

The base is identified by :func:`base_hash`, a digest of its keys, dtypes, shapes and
bytes, so a node holding another base is refused by name instead of training adapters
that do not fit the server's model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

#: Hex digits of the base hash shown and compared (64 bits of SHA-256).
HASH_DIGITS = 16


def frozen_keys(module: nn.Module) -> list[str]:
    """The ``state_dict`` keys of ``module``'s parameters that do not train.

    Tied parameters are listed under every name they have in the ``state_dict``.
    """
    return [
        name
        for name, param in module.named_parameters(remove_duplicate=False)
        if not param.requires_grad
    ]


def trainable_keys(keys: Iterable[str], frozen: Iterable[str]) -> list[str]:
    """``keys`` without the ``frozen`` ones, in their order."""
    skip = set(frozen)
    return [k for k in keys if k not in skip]


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
            return tensor.view(torch.int16).numpy()
        return tensor.numpy()
    if hasattr(value, "numpy"):  # flwr Array
        return value.numpy()
    return np.asarray(value)


def base_hash(tensors: Mapping[str, Any], keys: Sequence[str]) -> str:
    """Digest of the tensors ``keys`` of ``tensors`` (torch tensors, numpy arrays or
    Flower ``Array`` s): names, dtypes, shapes and bytes, in sorted key order.

    Returns
    -------
    str
        ``HASH_DIGITS`` hex digits; empty when ``keys`` is empty (no frozen base).

    Raises
    ------
    KeyError
        If ``tensors`` lacks one of ``keys``.
    """
    if not keys:
        return ""
    digest = hashlib.sha256()
    for key in sorted(keys):
        array = _as_numpy(tensors[key])
        digest.update(key.encode())
        digest.update(f"|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    return digest.hexdigest()[:HASH_DIGITS]
