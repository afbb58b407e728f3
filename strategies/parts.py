"""Which ``state_dict`` keys belong to the head, the body pieces and the tail for some cuts.

Cuts are comma-separated module names (``"conv2,fc2"``); more than two names split the
body again into pieces, one per helper of a chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

KeysFn = Callable[[str], Sequence[Sequence[str]]]


class ModelParts:
    """The ``state_dict`` keys of every part, per cuts, computed once.

    Parameters
    ----------
    part_keys : callable
        ``part_keys(cuts)``: the keys of every part, head first and tail last.
    """

    def __init__(self, part_keys: KeysFn) -> None:
        self._part_keys_fn = part_keys
        self._cache: dict[str, list[list[str]]] = {}

    def parts(self, cuts: str) -> list[list[str]]:
        """Keys of head, each body piece and tail for ``cuts``.

        Raises
        ------
        ValueError
            If ``cuts`` give fewer than three parts.
        """
        if cuts not in self._cache:
            parts = [list(k) for k in self._part_keys_fn(cuts)]
            if len(parts) < 3:
                raise ValueError(
                    f"cuts {cuts!r} give {len(parts)} parts; split learning needs head, "
                    "body and tail"
                )
            self._cache[cuts] = parts
        return self._cache[cuts]

    def head_body_tail(self, cuts: str) -> tuple[list[str], list[str], list[str]]:
        """Head, body and tail keys; the body is every piece of a chain together."""
        parts = self.parts(cuts)
        return parts[0], [k for piece in parts[1:-1] for k in piece], parts[-1]

    def pieces(self, cuts: str) -> list[list[str]]:
        """Keys of each body piece, in chain order (one piece for a cut pair)."""
        return self.parts(cuts)[1:-1]


def keys_of_split(parts: Any, model: Any = None, example_input: Any = None) -> tuple[str, KeysFn]:
    """The cuts of a :class:`flsplit.model.splitting.SplitModel` and a ``part_keys`` function.

    Other cuts than the split's own are traced on ``model`` (with ``example_input``).

    Raises
    ------
    ValueError
        From the returned function, for other cuts when no ``model`` was given.
    """
    from flsplit.model.splitting import parse_cuts, part_state_keys

    own = ",".join(parts.cuts)
    own_keys = [parts.part_keys(i) for i in range(len(parts.parts))]

    def keys_for(cuts: str) -> Sequence[Sequence[str]]:
        if cuts == own:
            return own_keys
        if model is None:
            raise ValueError(f"cuts {cuts!r} differ from {own!r} and no model was given")
        return part_state_keys(model, parse_cuts(cuts), example_input)

    return own, keys_for
