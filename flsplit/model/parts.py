"""A model cut into sequential parts: what :func:`flsplit.model.splitting.split_model` returns.

The parts come from the fx splitter (:mod:`flsplit.model.splitting`) or the block splitter
(:mod:`flsplit.model.blocks`); either way part 0 takes the model input (a tensor, or a
mapping of tensors for ``model(**inputs)``), part ``i > 0`` takes what part ``i - 1``
returned (a tensor, or a tuple of tensors as separate arguments), and the last part
returns the model output. The helpers below serve both splitters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["SplitModel", "attach_state", "resolve_cut_names", "restore_modes"]


@dataclass
class SplitModel:
    """A model cut into sequential parts.

    Attributes
    ----------
    cuts : tuple of str
        Names of the modules that start parts ``1 .. len(cuts)``.
    parts : list of nn.Module
        ``len(cuts) + 1`` modules; part 0 takes the model input, part ``i`` takes the
        output of part ``i - 1`` (a tensor, or a tuple of tensors as separate arguments),
        the last part returns the model output.
    full_keys : tuple of str
        The full model's ``state_dict`` keys, in order (used to order :meth:`part_keys`).
    model_type : type, optional
        The class of the model that was split (for messages about what the parts lack).
    """

    cuts: tuple[str, ...]
    parts: list[nn.Module]
    full_keys: tuple[str, ...] = field(default=(), repr=False)
    model_type: type | None = field(default=None, repr=False, compare=False)

    @property
    def head(self) -> nn.Module:
        """The first part (kept by the client)."""
        return self.parts[0]

    @property
    def body(self) -> nn.Module:
        """The middle part of a three-part (U-shaped) split (run by a helper).

        Raises
        ------
        ValueError
            If the split does not have exactly three parts; use ``parts[1:-1]`` then.
        """
        if len(self.parts) != 3:
            raise ValueError(
                f"body is defined for 3 parts, this split has {len(self.parts)}; use parts[1:-1]"
            )
        return self.parts[1]

    @property
    def tail(self) -> nn.Module:
        """The last part (kept by the client; returns the model output)."""
        return self.parts[-1]

    def part_keys(self, index: int) -> list[str]:
        """Return the ``state_dict`` keys of part ``index``.

        Parameters
        ----------
        index : int
            Part index (negative indices count from the end).

        Returns
        -------
        list of str
            Keys in the order of the full model's ``state_dict``.
        """
        keys = self.parts[index].state_dict().keys()
        if not self.full_keys:
            return list(keys)
        present = set(keys)
        return [k for k in self.full_keys if k in present]

    def forward(self, x: Any) -> Any:
        """Run all parts in sequence (the unsplit computation).

        Parameters
        ----------
        x : torch.Tensor or Mapping of str to torch.Tensor
            Model input.

        Returns
        -------
        Any
            The output of the last part.
        """
        for i, part in enumerate(self.parts):
            x = part(*x) if i and isinstance(x, tuple) else part(x)
        return x

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the union of the parts' state dicts (full-model keys)."""
        merged: dict[str, torch.Tensor] = {}
        for part in self.parts:
            merged.update(part.state_dict())
        if not self.full_keys:
            return merged
        return {k: merged[k] for k in self.full_keys if k in merged}

    def train(self, mode: bool = True) -> SplitModel:
        """Set every part to train (``mode=True``) or eval mode; return ``self``."""
        for part in self.parts:
            part.train(mode)
        return self

    def eval(self) -> SplitModel:
        """Set every part to eval mode; return ``self``."""
        return self.train(False)


@contextmanager
def restore_modes(model: nn.Module) -> Iterator[None]:
    """Restore the ``training`` flag of every submodule on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def attach_state(part: nn.Module, key: str, root: nn.Module) -> None:
    """Install ``root``'s parameter or buffer ``key`` in ``part`` at the same path."""
    path, _, attr = key.rpartition(".")
    value = getattr(root.get_submodule(path) if path else root, attr)
    owner = part
    for atom in path.split(".") if path else []:
        child = owner._modules.get(atom)
        if child is None:
            child = nn.Module()
            owner.add_module(atom, child)
        owner = child
    if isinstance(value, nn.Parameter):
        owner.register_parameter(attr, value)
    elif isinstance(value, torch.Tensor):
        owner.register_buffer(attr, value)


def resolve_cut_names(
    cuts: Sequence[str | int] | None,
    candidates: Sequence[str],
    canonical: Callable[[str], str | None],
    why_invalid: Callable[[str], str],
    position: Callable[[str], int],
) -> tuple[str, ...]:
    """Turn cut names or candidate indices into canonical names, in execution order.

    The rules both splitters share (:mod:`flsplit.model.splitting`,
    :mod:`flsplit.model.blocks`); what a valid name is stays theirs.

    Parameters
    ----------
    cuts : sequence of str or int, or None
        Names or indices into ``candidates``; ``None`` gives the default U-shape
        (``candidates[0]``, ``candidates[-1]``).
    candidates : sequence of str
        The splitter's candidate cuts, in execution order.
    canonical : callable
        The canonical name of a valid cut name, ``None`` for an invalid one.
    why_invalid : callable
        Why a name is not a valid cut (for the message).
    position : callable
        The execution position of a canonical name (to check the order).

    Raises
    ------
    ValueError
        For an invalid name or index, or cuts out of order; the message lists the
        valid cuts.
    """
    valid = f"valid cuts: {list(candidates)}"
    if cuts is None:
        if len(candidates) < 2:
            raise ValueError(f"the default U-shaped split needs at least 2 candidate cuts; {valid}")
        return (candidates[0], candidates[-1])
    if isinstance(cuts, (str, int)):
        raise TypeError(f"cuts must be a sequence of names or indices, got {cuts!r}")
    names: list[str] = []
    for cut in cuts:
        if isinstance(cut, bool) or not isinstance(cut, (str, int)):
            raise ValueError(f"invalid cut {cut!r}: expected a module name or an index; {valid}")
        if isinstance(cut, int):
            if not -len(candidates) <= cut < len(candidates):
                raise ValueError(
                    f"invalid cut index {cut}: {len(candidates)} candidates "
                    f"(indices 0..{len(candidates) - 1}); {valid}"
                )
            names.append(candidates[cut])
            continue
        name = canonical(cut)
        if name is None:
            raise ValueError(f"invalid cut {cut!r}: {why_invalid(cut)}; {valid}")
        names.append(name)
    positions = [position(n) for n in names]
    for a, b, pa, pb in zip(names, names[1:], positions, positions[1:], strict=False):
        if pb <= pa:
            raise ValueError(
                f"cuts must be distinct and in execution order, got {b!r} after {a!r}; {valid}"
            )
    return tuple(names)
