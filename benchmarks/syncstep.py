"""Synchronous-step mode: one global step over the clients a sampler picked.

Reference implementation (one process) of the step that global sampling
(:mod:`flsplit.plan.sampling.samplers`) schedules: client ``k`` contributes ``counts[s, k]``
samples to step ``s``; clients with a zero count sit the step out.

One step, :meth:`SynchronousStep.step`:

1. every participating client runs its head on its samples;
2. the body (ONE shared copy, as on a helper serving all of them) runs once on the
   activations of all clients concatenated in client order;
3. the body output is split back into the clients' rows; each client's tail computes
   its loss on its own labels (labels never leave the client), scaled by
   ``n_k / N`` (``n_k`` its samples, ``N`` the global batch), so the scaled losses add
   up to the mean loss over the global batch;
4. each tail backward gives the gradient at cut 2 for the client's rows; the body runs
   backward once on the concatenated gradient; the gradient at cut 1 is split back and
   each head runs backward;
5. the optimizers step.

Semantics. With ``client_parts="shared"`` (default) the head and tail gradients of all
participating clients are summed (an all-reduce of the client-side gradients) and every
copy in ``parts`` takes that update, also those of clients sitting the step out; if the
copies are equal at the step's start, every parameter after the step equals one
centralised step of the unsplit model on the concatenated global batch with the mean
loss. Passing the same head/tail modules for
every client gives the same result without copies (used by the offline experiment). With
``client_parts="local"`` each copy instead steps on its own samples' mean gradient, as a
client that trains its parts alone would; for plain SGD the example-weighted average of
the copies after the step (what FedAvg computes) then equals the centralised step.

BatchNorm. Layers in the body see the whole concatenated batch, so their batch
statistics, outputs, gradients and running statistics are those of the centralised step.
BatchNorm layers in a head or tail see only their client's sub-batch: their
normalisation uses per-client statistics (as in any parallel split learning) and the
step differs from the centralised one; keep BatchNorm in the body (or use GroupNorm /
LayerNorm in client parts) when exact equivalence matters. The running statistics of
client-side BatchNorm are updated per copy from its sub-batch.

Clients of different helpers. A helper runs the body on the concatenated activations of
its own clients only: its BatchNorm statistics are over its sub-batch, and its body
gradient covers its clients' share of the global mean (the loss scaling uses the global
``N``), so the body copies of all helpers summed (or the helpers' body gradients
all-reduced) give the centralised gradient; without that all-reduce each helper's body
takes a partial step and the bodies are aggregated federatedly at the end of the round.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["ClientParts", "StepResult", "SynchronousStep"]

CLIENT_PART_MODES = ("shared", "local")


@dataclass
class ClientParts:
    """A client's head, tail and the optimizer over both.

    Several clients may share one ``ClientParts`` (the same modules and optimizer):
    the step then accumulates their gradients in it and steps it once.
    """

    head: nn.Module
    tail: nn.Module
    optimizer: torch.optim.Optimizer | None = None


@dataclass
class StepResult:
    """What one synchronous step did.

    Attributes
    ----------
    examples : int
        Global batch size ``N`` (samples of all participating clients).
    loss : float
        Mean loss over the global batch (before the update).
    correct : int
        Correct argmax predictions (for 2-D logits), before the update.
    client_examples : dict
        Samples per participating client.
    client_loss : dict
        Each participating client's own mean loss.
    """

    examples: int
    loss: float
    correct: int
    client_examples: dict[Hashable, int] = field(default_factory=dict)
    client_loss: dict[Hashable, float] = field(default_factory=dict)


def _default_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


class SynchronousStep:
    """One shared body and the logic of a synchronous global step.

    Parameters
    ----------
    body : nn.Module
        The body every client's activations go through (one copy).
    body_optimizer : torch.optim.Optimizer, optional
        Optimizer over the body's parameters; None leaves the body's gradients in
        ``.grad`` without stepping (for inspection).
    loss_fn : callable
        ``loss_fn(logits, labels)``, the MEAN over its batch (default cross entropy).
    client_parts : {"shared", "local"}
        How client-side gradients are applied; see the module docstring.
    """

    def __init__(
        self,
        body: nn.Module,
        body_optimizer: torch.optim.Optimizer | None = None,
        loss_fn: LossFn = _default_loss,
        client_parts: str = "shared",
    ) -> None:
        if client_parts not in CLIENT_PART_MODES:
            raise ValueError(
                f"client_parts must be one of {', '.join(CLIENT_PART_MODES)}, got {client_parts!r}"
            )
        self.body = body
        self.body_optimizer = body_optimizer
        self.loss_fn = loss_fn
        self.client_parts = client_parts

    def step(
        self,
        parts: Mapping[Hashable, ClientParts],
        batches: Mapping[Hashable, tuple[torch.Tensor, torch.Tensor]],
    ) -> StepResult:
        """Run one global step.

        Parameters
        ----------
        parts : Mapping
            Client id -> its :class:`ClientParts` (may hold clients that sit out).
        batches : Mapping
            Client id -> ``(inputs, labels)`` of the samples it contributes this step.
            Clients with no entry or an empty batch sit the step out.

        Returns
        -------
        StepResult

        Raises
        ------
        ValueError
            If a batch names an unknown client, inputs and labels disagree in length,
            or no client contributes a sample.
        """
        active: list[Hashable] = []
        for cid, (inputs, labels) in batches.items():
            if cid not in parts:
                raise ValueError(f"batches names client {cid!r}, which has no parts")
            if inputs.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"client {cid!r}: {inputs.shape[0]} inputs but {labels.shape[0]} labels"
                )
            if inputs.shape[0] > 0:
                active.append(cid)
        if not active:
            raise ValueError("batches: no client contributes a sample to this step")
        sizes = [int(batches[c][0].shape[0]) for c in active]
        total = sum(sizes)

        # shared: every copy (also of clients sitting out) takes the same update
        chosen = list(parts) if self.client_parts == "shared" else active
        unique = _unique_parts([parts[c] for c in chosen])
        if self.client_parts == "local" and len(unique) != len(active):
            raise ValueError("client_parts='local' needs one ClientParts per participating client")
        for p in unique:
            _zero_grad(p)
        if self.body_optimizer is not None:
            self.body_optimizer.zero_grad(set_to_none=True)
        else:
            self.body.zero_grad(set_to_none=True)

        # 1. heads
        cut1 = [parts[c].head(batches[c][0]) for c in active]
        # 2. one body forward on the concatenated activations
        body_in = torch.cat([a.detach() for a in cut1]).requires_grad_(True)
        body_out = self.body(body_in)
        # 3. tails on each client's rows, losses scaled to the global mean
        cut2 = [chunk.detach().requires_grad_(True) for chunk in torch.split(body_out, sizes)]
        loss_sum = 0.0
        correct = 0
        client_loss: dict[Hashable, float] = {}
        for c, n, act in zip(active, sizes, cut2, strict=True):
            labels = batches[c][1]
            logits = parts[c].tail(act)
            loss = self.loss_fn(logits, labels)
            (loss * (n / total)).backward()
            client_loss[c] = float(loss.detach())
            loss_sum += client_loss[c] * n
            if logits.dim() == 2:
                correct += int((logits.detach().argmax(dim=1) == labels).sum())
        # 4. body backward once, heads backward on their rows of the cut-1 gradient
        body_out.backward(torch.cat([a.grad for a in cut2]))
        assert body_in.grad is not None
        for act, grad in zip(cut1, torch.split(body_in.grad, sizes), strict=True):
            if act.requires_grad:
                act.backward(grad)

        # 5. apply
        if self.client_parts == "shared":
            _all_reduce(unique)
        else:
            for c, n in zip(active, sizes, strict=True):
                for p in _params(parts[c]):
                    if p.grad is not None:
                        p.grad.mul_(total / n)
        for p in unique:
            if p.optimizer is not None:
                p.optimizer.step()
        if self.body_optimizer is not None:
            self.body_optimizer.step()
        return StepResult(
            examples=total,
            loss=loss_sum / total,
            correct=correct,
            client_examples=dict(zip(active, sizes, strict=True)),
            client_loss=client_loss,
        )


def _params(p: ClientParts) -> list[nn.Parameter]:
    return [*p.head.parameters(), *p.tail.parameters()]


def _unique_parts(parts: list[ClientParts]) -> list[ClientParts]:
    seen: dict[int, ClientParts] = {}
    for p in parts:
        seen.setdefault(id(p), p)
    heads = [id(p.head) for p in seen.values()]
    tails = [id(p.tail) for p in seen.values()]
    if len(set(heads)) != len(heads) or len(set(tails)) != len(tails):
        raise ValueError(
            "distinct ClientParts share a head or tail module; share the ClientParts object instead"
        )
    return list(seen.values())


def _zero_grad(p: ClientParts) -> None:
    if p.optimizer is not None:
        p.optimizer.zero_grad(set_to_none=True)
    p.head.zero_grad(set_to_none=True)
    p.tail.zero_grad(set_to_none=True)


def _all_reduce(unique: list[ClientParts]) -> None:
    """Give every copy the sum of all copies' gradients (parameters matched by order)."""
    if len(unique) < 2:
        return
    lists = [_params(p) for p in unique]
    if len({len(ps) for ps in lists}) != 1:
        raise ValueError("client_parts='shared' needs the same head and tail on every client")
    for group in zip(*lists, strict=True):
        grads = [q.grad for q in group if q.grad is not None]
        if not grads:
            continue
        total = torch.stack(grads).sum(dim=0)
        for q in group:
            q.grad = total.clone()
