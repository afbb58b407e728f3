"""Synchronous steps, client side: a round of global steps through the helper.

The client draws the samples the round's schedule gives it in every global step
(:class:`SampleStream`), runs its head and tail around the helper's shared body, and
(``client_parts="shared"``) posts its head and tail gradient and applies the helper's
reduced ones. The protocol is described in :mod:`flsplit.runtime.sync_helper`.

``client_parts``
    ``"shared"`` (exact): the client does not step on its own; it applies the helper's
    weighted sum of its clients' head and tail gradients of every step, so all head and
    tail copies of a helper's clients stay equal. ``"local"``: each client steps its own
    head and tail on its own mean gradient right after the step, and FedAvg averages the
    copies at the end of the round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from flsplit.config import CLIENT_PARTS
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import HelperClient
from flsplit.runtime.trainer import LossFn, RoundTotals, TrainResult, split_batch

__all__ = ["CLIENT_PARTS", "SampleStream", "flat_grad", "train_sync"]


class SampleStream:
    """A client's samples in a seeded order: passes over its data without replacement.

    Pass ``p`` is a permutation of ``range(size)`` drawn from
    ``numpy.random.default_rng([seed, p])``; :meth:`take` hands out the next indices,
    starting a new pass when one runs out.

    Parameters
    ----------
    size : int
        Samples the client holds.
    seed : int
        Seed of the passes.
    offset : int
        Samples already taken in earlier rounds (skipped).
    """

    def __init__(self, size: int, seed: int, offset: int = 0) -> None:
        if size < 1:
            raise ValueError(f"a client needs at least one sample to draw from, got {size}")
        self.size = int(size)
        self.seed = int(seed)
        self.position = int(offset)

    def _pass(self, index: int) -> np.ndarray:
        return np.random.default_rng([self.seed, index]).permutation(self.size)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` sample indices."""
        out = []
        while n > 0:
            index, within = divmod(self.position, self.size)
            chunk = self._pass(index)[within : within + n]
            out.append(chunk)
            self.position += len(chunk)
            n -= len(chunk)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def flat_grad(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The parameters' gradients as one vector (zeros where a gradient is missing)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
            for p in params
        ]
    )


def _apply_rows(
    rows: torch.Tensor, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer
) -> None:
    """One optimizer step per row of reduced gradients, in order."""
    sizes = [p.numel() for p in params]
    if rows.dim() != 2 or (rows.shape[0] and rows.shape[1] != sum(sizes)):
        raise ValueError(
            f"reduced gradients of shape {tuple(rows.shape)} do not fit {sum(sizes)} parameters"
        )
    for row in rows:
        for p, chunk in zip(params, torch.split(row, sizes), strict=True):
            p.grad = chunk.reshape(p.shape).to(p.dtype).clone()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_sync(
    head: nn.Module,
    tail: nn.Module,
    helper: HelperClient,
    data: tuple[torch.Tensor, torch.Tensor],
    counts: Sequence[int],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    client_parts: str = "shared",
    seed: int = 0,
    offset: int = 0,
    emulation: Emulation = NO_EMULATION,
    draw: Callable[[int], np.ndarray] | None = None,
) -> TrainResult:
    """Client side of a round of synchronous steps.

    Parameters
    ----------
    head, tail : nn.Module
        The client's parts.
    helper : HelperClient
        Connection to the helper.
    data : (inputs, labels)
        All the client's training samples.
    counts : Sequence[int]
        The client's column of the round's schedule: samples in each global step.
    loss_fn : callable
        ``loss_fn(logits, labels)``, the mean over the batch.
    optimizer : torch.optim.Optimizer
        Over the head and tail parameters (in that order).
    client_parts : {"shared", "local"}
        See the module docstring.
    seed, offset : int
        Seed of the client's :class:`SampleStream` and samples it drew in earlier rounds.
    emulation : Emulation
        Stretches the client's compute and transfers.
    draw : callable, optional
        ``draw(n)`` returns the next ``n`` sample indices (default: the stream).

    Returns
    -------
    TrainResult
        Samples used, steps taken part in, mean loss and accuracy, stage times.
    """
    if client_parts not in CLIENT_PARTS:
        raise ValueError(f"client-parts: {client_parts!r} is not one of {', '.join(CLIENT_PARTS)}")
    inputs, labels = data
    stream = SampleStream(int(labels.shape[0]), seed, offset)
    take = draw or stream.take
    # trainable ones only: a frozen base has no gradient to all-reduce (the helper's
    # grad size counts the same)
    params = [p for p in (*head.parameters(), *tail.parameters()) if p.requires_grad]
    shared = client_parts == "shared"
    head.train()
    tail.train()
    counts = [int(c) for c in counts]
    steps = [s for s, c in enumerate(counts) if c > 0]
    total_steps = len(counts)
    totals = RoundTotals()
    helper.connect()
    started = time.time()
    optimizer.zero_grad(set_to_none=True)
    if shared:
        _apply_rows(helper.sync(steps[0] if steps else total_steps), params, optimizer)
    for i, step in enumerate(steps):
        index = torch.from_numpy(take(counts[step]))
        following = steps[i + 1] if i + 1 < len(steps) else total_steps

        def exchange(following: int = following) -> None:
            rows = helper.sync(following, flat_grad(params))
            with emulation.compute():
                _apply_rows(rows, params, optimizer)

        split_batch(head, tail, helper, inputs[index], labels[index], loss_fn, optimizer,
                    totals, emulation, step=step, exchange=exchange if shared else None)
    helper.finish()
    return totals.result(started)
