"""The inner cuts of a helper chain.

Run-config keys (read and checked by :func:`flsplit.config.chain_settings`):

- ``chain-length``: helpers per client (1: one helper runs the whole body, as without
  chains). A client's body, between the outer cuts ``cuts``, is cut again into
  ``chain-length`` pieces, one per helper of its chain.
- ``chain-cuts``: the ``chain-length - 1`` inner cuts, comma-separated module names or
  candidate indices strictly between the outer cuts, or ``"auto"``: the block-level
  candidate cuts (:func:`flsplit.model.splitting.candidate_cuts`) between the outer cuts that make
  the memory a client's piece needs on its helper as even as possible (least largest
  piece): three times its parameter bytes (weights, gradients, momentum) plus the
  activations autograd keeps for the backward at the training batch size
  (:func:`piece_memory_bytes`).
- ``micro-batches``: micro-batches per batch, pipelined through the chain (1: whole
  batches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flsplit.config import ChainSettings


def balance(costs: Sequence[float], parts: int) -> list[int]:
    """Cut a sequence of segment costs into ``parts`` contiguous non-empty groups with the
    least largest group sum.

    Parameters
    ----------
    costs : sequence of float
        Cost of each segment, in order.
    parts : int
        Number of groups, ``1 <= parts <= len(costs)``.

    Returns
    -------
    list of int
        The ``parts - 1`` indices where groups 2, 3, ... start. Among the partitions with
        the least largest sum, the one whose sums sorted from largest are smallest
        lexicographically, found by dynamic programming.
    """
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} segments into {parts} non-empty groups")
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + float(cost))
    # best[k][i]: (sorted group sums, largest first) of the first i segments in k groups
    best: list[list[tuple[float, ...] | None]] = [[None] * (n + 1) for _ in range(parts + 1)]
    start: list[list[int]] = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = ()
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                previous = best[k - 1][j]
                if previous is None:
                    continue
                key = tuple(sorted((*previous, prefix[i] - prefix[j]), reverse=True))
                if best[k][i] is None or key < best[k][i]:
                    best[k][i], start[k][i] = key, j
    cuts, i = [], n
    for k in range(parts, 0, -1):
        i = start[k][i]
        cuts.append(i)
    return sorted(cuts)[1:]


def piece_memory_bytes(parts: Sequence[Any], example_input: Any, batch_size: int) -> list[float]:
    """Memory one client's copy of each part needs on a helper in ``"per-client"`` mode.

    Three times the part's parameter bytes (weights, gradients, one optimizer buffer such
    as SGD momentum) plus the bytes autograd saves for the backward during a forward of a
    ``batch_size`` batch (measured on ``example_input`` with saved-tensor hooks and scaled
    by ``batch_size`` over its batch). Saved tensors that are a part's parameters are not
    counted twice.

    Parameters
    ----------
    parts : sequence of torch.nn.Module
        Consecutive parts of a split model, the first taking ``example_input``.
    example_input : torch.Tensor or tuple of torch.Tensor
        One input batch of the first part (what the part before it returned).
    batch_size : int
        Training batch size.

    Returns
    -------
    list of float
        Bytes per part.
    """
    import torch

    x = example_input if isinstance(example_input, tuple) else (example_input,)
    scale = batch_size / max(int(x[0].shape[0]), 1)
    sizes = []
    for part in parts:
        own = {t.untyped_storage().data_ptr() for t in part.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor, saved: dict[int, int] = saved,
                 own: set[int] = own) -> torch.Tensor:
            key = tensor.untyped_storage().data_ptr()
            if key not in own:
                saved[key] = tensor.untyped_storage().nbytes()
            return tensor

        inp = [t.detach().requires_grad_(t.is_floating_point()) for t in x]
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = part(*inp)
        params = sum(t.numel() * t.element_size() for t in part.parameters())
        sizes.append(3.0 * params + scale * sum(saved.values()))
        x = tuple(t.detach() for t in (out if isinstance(out, tuple) else (out,)))
    return sizes


def chain_cut_names(
    model: Any,
    example_input: Any,
    outer: Sequence[str],
    settings: ChainSettings,
    batch_size: int | None = None,
) -> tuple[str, ...]:
    """All cuts of a chain: the outer cuts with the inner cuts between them.

    Parameters
    ----------
    model : torch.nn.Module
        The full model (not modified).
    example_input : torch.Tensor
        One input batch.
    outer : sequence of str
        The two resolved outer cuts (head | body | tail).
    settings : ChainSettings
        Chain length and ``chain-cuts``.
    batch_size : int, optional
        Training batch size (default: the example's); ``chain-cuts = "auto"`` balances
        the memory a client's piece needs on its helper (:func:`piece_memory_bytes`).

    Returns
    -------
    tuple of str
        ``(outer[0], inner..., outer[1])``; just ``outer`` for a chain of one.

    Raises
    ------
    ValueError
        If named inner cuts are invalid or not strictly between the outer cuts, or the
        body has fewer than ``chain-length`` block-level pieces; the message names them.
    """
    import torch

    from flsplit.model.splitting import candidate_cuts, parse_cuts, resolve_cuts, split_model

    outer = tuple(outer)
    if len(outer) != 2:
        raise ValueError(f"chains need two outer cuts (head | body | tail), got {outer}")
    if settings.length == 1:
        return outer
    if settings.cuts != "auto":
        inner = parse_cuts(settings.cuts) or ()
        try:
            return resolve_cuts(model, (outer[0], *inner, outer[1]), example_input)
        except ValueError as err:
            raise ValueError(
                f"run config chain-cuts={settings.cuts!r}: the inner cuts must be valid cuts "
                f"strictly between the outer cuts {','.join(outer)}: {err}"
            ) from None
    names = candidate_cuts(model, example_input)
    if outer[0] not in names or outer[1] not in names:
        raise ValueError(
            f"chain-cuts='auto' balances block-level cuts, but the outer cuts "
            f"{','.join(outer)} are not both block-level; name the inner cuts in chain-cuts"
        )
    inside = names[names.index(outer[0]) + 1 : names.index(outer[1])]
    if len(inside) + 1 < settings.length:
        raise ValueError(
            f"chain-length={settings.length}: the body between {','.join(outer)} has only "
            f"{len(inside) + 1} block-level pieces; lower chain-length or move the outer cuts"
        )
    # a copy: the forwards below run in training mode (BatchNorm statistics move)
    split = split_model(model, (outer[0], *inside, outer[1]), example_input)
    split.train()
    with torch.no_grad():
        cut1 = split.parts[0](example_input)
    first = (
        next(iter(example_input.values())) if isinstance(example_input, Mapping) else example_input
    )
    batch = batch_size or int(first.shape[0])
    sizes = piece_memory_bytes(split.parts[1:-1], cut1, batch)
    starts = balance(sizes, settings.length)
    return (outer[0], *(inside[s - 1] for s in starts), outer[1])
