"""A node's copy of the frozen base: received once per run, kept in ``Context.state``.

The server sends a node the frozen tensors of the parts it runs (head and tail, or body
pieces) until the node confirmed holding them; later train messages carry only the
trainable tensors and buffers (:mod:`flsplit.model.frozen`). The node keeps what it
received in its ``Context.state`` (per run, in the node's memory), under the base's hash:
Flower hands a node the same state at every message of a run whatever process runs the
call (a simulation's Ray workers, a SuperNode's app process), and a restarted node starts
without it, so the server's bookkeeping and the node's cache cannot silently disagree.

A node that holds a base of another hash than the one the server names is refused with
both hashes; one that lacks a frozen tensor the message does not carry (it restarted)
fails its round, and the server sends it the base again in the next one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from torch import nn

from flsplit.model.frozen import frozen_keys
from flsplit.protocol import BASE_CACHE, BASE_CACHE_INFO, BASE_HASH


class BaseMismatchError(ValueError):
    """The node holds (or builds) another frozen base than the server's."""


@dataclass
class PartState:
    """The weights a node loads into its parts this round.

    Attributes
    ----------
    state : dict
        ``state_dict`` key -> tensor: the message's tensors and the cached frozen ones
        (one tensor object per frozen key, so parts that load it share its memory).
    frozen : set of str
        The frozen keys of the parts (never sent back).
    held : str
        The base hash the node holds after this message (``""``: no frozen base).
    """

    state: dict[str, torch.Tensor]
    frozen: set[str]
    held: str


def held_base(context: Context) -> str:
    """The hash of the frozen base this node holds for the run (``""``: none)."""
    info = context.state.config_records.get(BASE_CACHE_INFO)
    return str(info.get(BASE_HASH, "")) if info is not None else ""


def part_state(context: Context, parts: Iterable[nn.Module], arrays: ArrayRecord,
               declared: str, shared: dict[str, torch.Tensor] | None = None) -> PartState:
    """The round's weights for ``parts``: the message's ``arrays`` completed with the
    frozen tensors cached from earlier messages; frozen tensors the message carries are
    cached.

    Parameters
    ----------
    context : Context
        The node's context (its ``state`` holds the cache).
    parts : iterable of nn.Module
        The parts this node runs, as its ``SplitTask.model_fn`` builds them (their
        ``requires_grad`` says which parameters are frozen).
    arrays : ArrayRecord
        The message's tensors.
    declared : str
        The server's base hash (the message's ``base-hash``; ``""``: no frozen base).
    shared : dict, optional
        Frozen tensors made by earlier calls of the same message, reused (and added to),
        so that parts loaded one after the other share them.

    Raises
    ------
    BaseMismatchError
        If the node holds a base of another hash than ``declared``.
    ValueError
        If a frozen tensor is neither in ``arrays`` nor cached.
    """
    frozen: set[str] = set()
    for part in parts:
        frozen.update(frozen_keys(part))
    if not frozen or not declared:
        # no frozen base on one side: everything travels, as without one (a model that
        # differs between server and node fails its load with the keys it lacks)
        return PartState(arrays.to_torch_state_dict(), set(), "")
    held = held_base(context)
    if held and held != declared:
        raise BaseMismatchError(
            f"this node holds frozen base {held} but the server's is {declared}: the node is "
            "refused; give the server and every node the same frozen base (restart the "
            "node to drop its copy)"
        )
    cache = context.state.array_records.get(BASE_CACHE)
    if cache is None:
        cache = ArrayRecord()
    received = [k for k in arrays if k in frozen]
    for key in received:
        cache[key] = arrays[key]
    if received or not held:
        context.state[BASE_CACHE] = cache
        context.state[BASE_CACHE_INFO] = ConfigRecord({BASE_HASH: declared})
    missing = sorted(k for k in frozen if k not in arrays and k not in cache)
    if missing:
        raise ValueError(
            f"this node does not hold {len(missing)} tensors of frozen base {declared} "
            f"(e.g. {missing[0]}) and the message does not carry them: it restarted or "
            "never received them; the server sends them again in its next round"
        )
    memo = shared if shared is not None else {}
    state = {k: _tensor(arrays[k]) for k in arrays if k not in frozen}
    for key in frozen:
        if key not in memo:
            memo[key] = _tensor(arrays[key] if key in arrays else cache[key])
        state[key] = memo[key]
    return PartState(state, frozen, declared)


def _tensor(array: Any) -> torch.Tensor:  # a flwr Array
    return torch.from_numpy(array.numpy())


def without(state: dict[str, torch.Tensor], frozen: Collection[str]) -> dict[str, torch.Tensor]:
    """``state`` without the ``frozen`` keys: what a node sends back."""
    return {k: v for k, v in state.items() if k not in frozen}
