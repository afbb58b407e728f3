"""Client-side split training: head and tail here, body on the helper.

Per batch: head forward, activations to the helper, body output back, tail forward, loss
and backward (labels never leave the client), gradient at cut 2 to the helper, gradient at
cut 1 back, head backward, one optimizer step for head and tail. The helper steps its body
copy when it runs the backward task, so one batch is one optimizer step of the full model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from flsplit.runtime.dataplane import HelperClient

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainResult:
    """What a client measured in one round of split training."""

    examples: int
    batches: int
    loss: float
    accuracy: float
    head_seconds: float
    tail_seconds: float
    helper_wait_seconds: float
    wall_seconds: float


def train_split(
    head: nn.Module,
    tail: nn.Module,
    helper: HelperClient,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int = 1,
) -> TrainResult:
    """Train head and tail through a helper for ``epochs`` passes over ``batches``.

    Parameters
    ----------
    head, tail : nn.Module
        The client's parts of the model.
    helper : HelperClient
        Connection to the helper that runs the body.
    batches : Iterable of (inputs, labels)
        The client's training data; iterated once per epoch.
    loss_fn : callable
        ``loss_fn(logits, labels)``, a mean over the batch.
    optimizer : torch.optim.Optimizer
        Optimizer over the head and tail parameters.
    epochs : int
        Local epochs.

    Returns
    -------
    TrainResult
        Example count, mean loss and accuracy, and measured times.
    """
    head.train()
    tail.train()
    examples = batches_done = correct = 0
    loss_sum = head_s = tail_s = 0.0
    wall_start = time.perf_counter()
    for _ in range(epochs):
        for inputs, labels in batches:
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            cut1 = head(inputs)
            t1 = time.perf_counter()
            body_out = helper.forward(cut1.detach())
            t2 = time.perf_counter()
            cut2 = body_out.requires_grad_(True)
            logits = tail(cut2)
            loss = loss_fn(logits, labels)
            loss.backward()
            t3 = time.perf_counter()
            grad_cut1 = helper.backward(cut2.grad)
            t4 = time.perf_counter()
            cut1.backward(grad_cut1.to(cut1.dtype))
            optimizer.step()
            t5 = time.perf_counter()
            head_s += (t1 - t0) + (t5 - t4)
            tail_s += t3 - t2
            n = int(labels.shape[0])
            examples += n
            batches_done += 1
            loss_sum += float(loss.detach()) * n
            if logits.dim() == 2:
                correct += int((logits.detach().argmax(dim=1) == labels).sum())
    helper.finish()
    return TrainResult(
        examples=examples,
        batches=batches_done,
        loss=loss_sum / max(examples, 1),
        accuracy=correct / max(examples, 1),
        head_seconds=head_s,
        tail_seconds=tail_s,
        helper_wait_seconds=helper.transfer_seconds,
        wall_seconds=time.perf_counter() - wall_start,
    )
