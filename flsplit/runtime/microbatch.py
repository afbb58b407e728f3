"""One client batch cut into micro-batches that flow through the helper chain pipelined.

The head runs once on the whole batch; its output is cut into ``M`` micro-batches
(``ceil(n / M)`` samples each, the last one smaller if ``M`` does not divide ``n``). Every
micro-batch's forward goes out at once, from a small thread pool, without waiting for the
previous one to come back, so while the second helper of a chain works on micro-batch
``j`` the first one already works on ``j + 1``. As each body output returns, the tail runs
on it, its loss is scaled by ``micro size / batch size`` and back-propagated, and the
gradient at the last cut goes back at once. When every micro-batch's gradient at the first
cut is back, the head back-propagates them (concatenated, in micro-batch order) and the
optimizer steps once. The helpers accumulate the micro-batches' gradients and step once
after the batch's last backward (:mod:`flsplit.runtime.worker`), so one batch is exactly
one step of the whole batch through the unsplit model, up to floating-point summation
order, for layers that treat samples independently. A BatchNorm in the body or tail
normalises each micro-batch by its own statistics (and updates its running statistics
once per micro-batch); in the head, which sees the whole batch, it is unchanged.

A head that returns a tuple of tensors (:mod:`flsplit.model.crossing`) has each of them cut
along dimension 0 (a tensor whose dimension 0 is not the batch, e.g. a rotary table
``[1, T, D]``, goes whole with every micro-batch); the gradients that come back are
concatenated per tensor (summed for a tensor that went whole).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import torch
from torch import nn

from flsplit.model import crossing
from flsplit.model.crossing import Activation, Inputs
from flsplit.model.outputs import correct_count, logits_of
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import DataPlaneError, HelperClient, link_nbytes

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BatchOutcome:
    """What one micro-batched batch measured.

    ``head_seconds``, ``tail_seconds`` and ``head_backward_seconds`` are this client's
    compute (with emulated transfers at its end); ``wait_seconds`` the rest of the
    batch's wall time, spent waiting for the chain (network and helpers).
    """

    examples: int
    loss_sum: float
    correct: float
    head_seconds: float
    tail_seconds: float
    head_backward_seconds: float
    wait_seconds: float


class MicroBatchStep:
    """Runs batches through a helper chain as pipelined micro-batches.

    Parameters
    ----------
    head, tail : nn.Module
        The client's parts of the model.
    helper : HelperClient
        Connection to the first helper of the chain.
    loss_fn : callable
        ``loss_fn(logits, labels)``, a mean over its samples.
    optimizer : torch.optim.Optimizer
        Optimizer over the head and tail parameters.
    micro_batches : int
        Micro-batches per batch (at most the batch size are used).
    emulation : Emulation
        Stretches this client's compute and transfers.
    """

    def __init__(
        self,
        head: nn.Module,
        tail: nn.Module,
        helper: HelperClient,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        micro_batches: int,
        emulation: Emulation = NO_EMULATION,
    ) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches={micro_batches} must be at least 1")
        self.head, self.tail, self.helper = head, tail, helper
        self.loss_fn, self.optimizer = loss_fn, optimizer
        self.micro_batches = micro_batches
        self.emulation = emulation
        self.step = 0
        self._pool = ThreadPoolExecutor(micro_batches, thread_name_prefix="flsplit-micro")
        # an emulated link carries one transfer at a time in each direction
        self._uplink, self._downlink = threading.Lock(), threading.Lock()

    def close(self) -> None:
        """Stop the thread pool."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> MicroBatchStep:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, inputs: Inputs, labels: torch.Tensor) -> BatchOutcome:
        """Train on one batch: one optimizer step of head and tail (and of every helper's
        piece), equal to the step of the whole batch.

        Raises
        ------
        DataPlaneError
            If a helper of the chain refused or failed a micro-batch.
        """
        self.step += 1
        emulation = self.emulation
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with emulation.compute():
            cut1 = self.head(inputs)
        n = int(labels.shape[0])
        size = math.ceil(n / self.micro_batches)
        if isinstance(cut1, torch.Tensor):
            chunks = cut1.detach().split(size)
        else:  # leaves that keep the head's gradient flags; split like the labels
            leaves = crossing.detach_inputs(cut1, crossing.needs_grad(cut1))
            chunks = crossing.chunk(leaves, self.micro_batches)
        label_chunks = labels.split(size)
        micros = len(chunks)
        device = crossing.as_tuple(cut1)[0].device
        head_done = time.perf_counter()
        forwards = [
            self._pool.submit(self._send, "fwd", chunks[j], j, micros) for j in range(micros)
        ]
        index = {id(f): j for j, f in enumerate(forwards)}
        backwards: dict[int, Future] = {}
        loss_sum, correct, tail_seconds = 0.0, 0.0, 0.0
        for future in as_completed(forwards):
            j = index[id(future)]
            body_out = future.result()
            t0 = time.perf_counter()
            with emulation.compute():
                if isinstance(body_out, torch.Tensor):
                    cut2: Activation = body_out.requires_grad_(True)
                else:
                    cut2 = crossing.detach_inputs(
                        crossing.to_device(body_out, device), crossing.needs_grad(body_out)
                    )
                logits = logits_of(crossing.call_part(self.tail, cut2))
                loss = self.loss_fn(logits, label_chunks[j])
                (loss * (crossing.batch_size(chunks[j]) / n)).backward()
            tail_seconds += time.perf_counter() - t0
            backwards[j] = self._pool.submit(self._send, "bwd", _gradients(cut2), j, micros)
            loss_sum += float(loss.detach()) * int(label_chunks[j].shape[0])
            correct += correct_count(logits, label_chunks[j])
        grads = [backwards[j].result() for j in range(micros)]
        t0 = time.perf_counter()
        with emulation.compute():
            if isinstance(cut1, torch.Tensor):
                cut1.backward(torch.cat(grads).to(cut1.dtype))
            else:
                crossing.backward(cut1, _join(cut1, grads, n))
            self.optimizer.step()
        end = time.perf_counter()
        head_backward = end - t0
        return BatchOutcome(
            examples=n,
            loss_sum=loss_sum,
            correct=correct,
            head_seconds=head_done - start,
            tail_seconds=tail_seconds,
            head_backward_seconds=head_backward,
            wait_seconds=max(end - head_done - tail_seconds - head_backward, 0.0),
        )

    def _send(self, op: str, tensor: Activation, micro: int, micros: int) -> Activation:
        with self._uplink:
            self.emulation.transfer(link_nbytes(self.helper, op, tensor))
        answer, _, _ = self.helper.call(op, tensor, self.step, micro, micros)
        if answer is None:
            raise DataPlaneError(f"helper {self.helper.address} answered {op} without a tensor")
        with self._downlink:
            self.emulation.transfer(link_nbytes(self.helper, op, answer))
        return answer


def _gradients(cut2: Activation) -> Activation:
    """The gradient of the tail's input, or of its tensors that need one (zeros where
    none reached them)."""
    if isinstance(cut2, torch.Tensor):
        return cut2.grad
    return tuple(
        t.grad if t.grad is not None else torch.zeros_like(t)
        for t in crossing.flagged(cut2, crossing.needs_grad(cut2))
    )


def _join(cut1: tuple[torch.Tensor, ...], grads: list[Activation], n: int) -> tuple:
    """The micro-batches' gradients of the head's flagged outputs, per output: concatenated
    where it was split along the batch, summed where it went whole to every micro-batch."""
    targets = crossing.flagged(cut1, crossing.needs_grad(cut1))
    joined = []
    for k, target in enumerate(targets):
        parts = [crossing.as_tuple(g)[k] for g in grads]
        if target.dim() >= 1 and target.shape[0] == n:
            joined.append(torch.cat(parts))
        else:
            joined.append(torch.stack(parts).sum(dim=0))
    return tuple(joined)
