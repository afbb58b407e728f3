"""Client-side split training: head and tail here, body on the helper.

Per batch: head forward, activations to the helper, body output back, tail forward, loss
and backward (labels never leave the client), gradient at cut 2 to the helper, gradient at
cut 1 back, head backward, one optimizer step for head and tail. The helper steps its body
copy when it runs the backward task, so one batch is one optimizer step of the full model.

With ``micro_batches > 1`` each batch is cut into micro-batches that flow through the
helper (or the chain of helpers) pipelined, gradients accumulated to one step per batch
(:mod:`flsplit.runtime.microbatch`).

Several tensors may cross a cut (:mod:`flsplit.model.crossing`): a head returning a tuple
sends it whole, the tail is called ``tail(*body_output)``, and only the tensors that need a
gradient carry one back. The inputs of a batch may be a tensor or a mapping of named
tensors (``head(inputs)``). The loss gets the logits of the tail's output
(:func:`~flsplit.model.outputs.logits_of`); the accuracy counts per example
(:func:`~flsplit.model.outputs.correct_count`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flsplit.model import crossing
from flsplit.model.crossing import Activation, Inputs
from flsplit.model.outputs import correct_count, logits_of
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import HelperClient, link_nbytes
from flsplit.runtime.microbatch import MicroBatchStep
from flsplit.runtime.worker import ProximalTerm

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: A batch stalled when the client's own time for it (load and stages) exceeds this many
#: times the round's median batch ...
STALL_FACTOR = 5.0
#: ... and the median by this many seconds (:meth:`RoundTotals.stalled`).
STALL_MIN_S = 0.25


@dataclass
class TrainResult:
    """What a client measured in one round of split training.

    The stage means follow the planner's five-stage model of one batch: ``stage1_ms``
    head forward and upload, ``stage3_ms`` download, tail forward/backward and upload,
    ``stage5_ms`` download and head backward (stages 2 and 4 run on the helper).
    Network time of a call is its round trip minus the helper's service time, split
    evenly between the two directions. With micro-batches the stages overlap: stage 1 is
    the head's forward, stage 3 the tails, stage 5 the head's backward and step, and
    ``helper_service_ms`` the rest of the batch's wall time (waiting for the chain).
    ``load_ms`` is the time spent getting the batches from the client's data loader
    (creating its iterator each epoch, ``next`` on it, the final exhausted call
    included), per batch: it precedes each batch's stage 1 and is in none of the stages.
    All of these are steady-state means (:class:`RoundTotals`): with two batches or more,
    the first batch and the time before it are left out. ``steady_batch_ms`` is the wall
    time per batch from the end of the first batch to the end of the round (0 with a
    single batch).
    """

    examples: int
    batches: int
    loss: float
    accuracy: float
    stage1_ms: float
    stage3_ms: float
    stage5_ms: float
    helper_service_ms: float
    started: float
    ended: float
    load_ms: float = 0.0
    steady_batch_ms: float = 0.0

    @property
    def wall_seconds(self) -> float:
        """Duration of the training loop."""
        return self.ended - self.started


def train_split(
    head: nn.Module,
    tail: nn.Module,
    helper: HelperClient,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int = 1,
    emulation: Emulation = NO_EMULATION,
    micro_batches: int = 1,
    proximal_mu: float = 0.0,
    proximal_form: str = "squared",
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
    emulation : Emulation
        Stretches this client's compute and transfers to emulate a device and link.
    micro_batches : int
        Micro-batches per batch, pipelined through the helper chain (1: whole batches).
    proximal_mu, proximal_form : float, str
        FedProx's ``mu`` and term (:class:`~flsplit.runtime.worker.ProximalTerm`): every
        step of head and tail adds the term's gradient (the helper adds the body's).

    Returns
    -------
    TrainResult
        Example count, mean loss and accuracy, and measured stage times.
    """
    head.train()
    tail.train()
    connect = getattr(helper, "connect", None)
    if connect is not None:  # the helper coming up is a late start, not network time
        connect()
    started = time.time()
    params = [*head.parameters(), *tail.parameters()]
    with proximal_term(optimizer, params, ProximalTerm(proximal_mu, proximal_form)):
        if micro_batches > 1:
            return _train_micro_batched(
                head, tail, helper, batches, loss_fn, optimizer, epochs, emulation,
                micro_batches, started,
            )
        totals = RoundTotals()
        for _ in range(epochs):
            for inputs, labels in totals.timed(batches):
                split_batch(head, tail, helper, inputs, labels, loss_fn, optimizer, totals,
                            emulation)
    helper.finish()
    return totals.result(started)


@contextlib.contextmanager
def proximal_term(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], term: ProximalTerm
) -> Iterator[None]:
    """While in the block, every ``optimizer.step()`` first adds the gradient of ``term``
    (FedProx's proximal term around the weights at entry) to ``params``' gradients."""
    if term.mu <= 0:
        yield
        return
    start = [p.detach().clone() for p in params]

    def add(*_: object) -> None:
        term.add_gradient(params, start)

    handle = optimizer.register_step_pre_hook(add)
    try:
        yield
    finally:
        handle.remove()


class RoundTotals:
    """A round's per-batch figures, turned into a :class:`TrainResult`.

    The stage, service and load means describe the client's steady state, what every
    later round repeats: with two batches or more the first batch is left out, and so is
    the time before it (a process's first round pays its imports, its first operator calls
    and its optimizer's set-up there, several times a batch; every round pays creating
    its data loader's first iterator there). A batch that stalled
    (:meth:`RoundTotals.stalled`: seconds more than the others, a one-off pause) is left
    out the same way. With a single batch that batch is all there
    is. Examples, loss and accuracy count every batch, ``steady_batch_ms`` every batch
    after the first.
    """

    def __init__(self) -> None:
        self.examples = self.batches = self.correct = 0
        self.loss_sum = 0.0
        #: sums over every batch (seconds)
        self.stages = [0.0, 0.0, 0.0]
        self.service = 0.0
        self.load = 0.0
        #: the first batch's stages and service, and the load before it (seconds)
        self.first_stages = [0.0, 0.0, 0.0]
        self.first_service = 0.0
        self.first_load = 0.0
        #: ``time.perf_counter()`` when the first batch ended
        self.first_ended: float | None = None
        #: per batch after the first: (load before it, stage 1, 3, 5, service) seconds
        self.steady: list[tuple[float, float, float, float, float]] = []
        self._pending_load = 0.0  # loader time since the last batch

    def timed(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate ``batches`` once, adding the time spent inside the loader (making its
        iterator, every ``next``, the last one that finds it exhausted) to the load time:
        a slow loader makes a slow client as much as slow compute does, and the planner
        must see it."""
        start = time.perf_counter()
        iterator = iter(batches)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                self.add_load(time.perf_counter() - start)
                return
            self.add_load(time.perf_counter() - start)
            yield batch
            start = time.perf_counter()

    def add_load(self, seconds: float) -> None:
        """Add ``seconds`` the client spent outside the five stages getting its next
        batch (its own training loop: everything between a batch's last stage and the
        next one's first); before the first batch is added, the time before it."""
        self.load += seconds
        self._pending_load += seconds
        if self.batches == 0:
            self.first_load += seconds

    def add(self, examples: int, loss_sum: float, correct: float,
            stages: Sequence[float], service: float, ended: float | None = None) -> None:
        """Add one batch: its examples, summed loss, correct predictions, the seconds of
        stages 1, 3 and 5, the seconds spent on (or waiting for) the helper, and when it
        ended (``time.perf_counter()``; default: now)."""
        self.examples += examples
        self.batches += 1
        self.loss_sum += loss_sum
        self.correct += correct
        for i, seconds in enumerate(stages):
            self.stages[i] += seconds
        self.service += service
        if self.batches == 1:
            self.first_stages = [float(s) for s in stages]
            self.first_service = service
            self.first_ended = time.perf_counter() if ended is None else ended
        else:
            self.steady.append((self._pending_load, *(float(s) for s in stages), service))
        self._pending_load = 0.0

    def stalled(self) -> list[int]:
        """Indices (in :attr:`steady`) of the batches that stalled: the client's own time
        (load and stages 1, 3 and 5) over :data:`STALL_FACTOR` times the median batch's
        and :data:`STALL_MIN_S` more. A one-off pause is not what the client's next round
        repeats: on a loaded machine a client emulating a Raspberry Pi (30x) once spent
        9 s between two of its 11 batches (its loop's time there is stretched like its
        compute), which read as 0.9 s more per batch, and the next round was predicted
        57% long.
        """
        own = [sum(b[:4]) for b in self.steady]
        if len(own) < 3:
            return []
        median = statistics.median(own)
        return [i for i, t in enumerate(own)
                if t > STALL_FACTOR * median and t - median > STALL_MIN_S]

    def result(self, started: float) -> TrainResult:
        """The round's :class:`TrainResult` (stage, service and load times in ms per
        batch of the steady state: the first batch and the time before it left out when
        there are more)."""
        stages, service, load = self.stages, self.service, self.load
        steady = self.batches - 1
        batch_ms = 0.0
        if steady > 0:
            # from the end of the first batch to now, per batch after it
            batch_ms = 1000.0 * (time.perf_counter() - (self.first_ended or 0.0)) / steady
            stages = [a - b for a, b in zip(stages, self.first_stages, strict=True)]
            service -= self.first_service
            load -= self.first_load
            for i in self.stalled():  # left out like the first batch
                gap, *own, waited = self.steady[i]
                stages = [a - b for a, b in zip(stages, own, strict=True)]
                service -= waited
                load -= gap
                steady -= 1
        per_batch = 1000.0 / max(steady, 1)
        return TrainResult(
            examples=self.examples,
            batches=self.batches,
            loss=self.loss_sum / max(self.examples, 1),
            accuracy=self.correct / max(self.examples, 1),
            stage1_ms=stages[0] * per_batch,
            stage3_ms=stages[1] * per_batch,
            stage5_ms=stages[2] * per_batch,
            helper_service_ms=service * per_batch,
            started=started,
            ended=time.time(),
            load_ms=load * per_batch,
            steady_batch_ms=batch_ms,
        )


def split_batch(
    head: nn.Module,
    tail: nn.Module,
    helper: HelperClient,
    inputs: Inputs,
    labels: torch.Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    totals: RoundTotals,
    emulation: Emulation = NO_EMULATION,
    *,
    step: int | None = None,
    exchange: Callable[[], None] | None = None,
) -> None:
    """Train one batch through the helper and add its figures to ``totals``.

    ``step`` names the helper-side step (synchronous-step mode; default: the client's own
    batch counter). ``exchange``, if given, runs after the head backward instead of the
    optimizer step (synchronous steps reduce the head and tail gradients through the
    helper and step there); its time counts to stage 5, except its service time at the
    helper (waiting there for the step's other clients), which counts as service.
    """
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with emulation.compute():
        cut1 = head(inputs)
    emulation.transfer(link_nbytes(helper, "fwd", cut1))
    t1 = time.perf_counter()
    body_out = helper.forward(outgoing(cut1), step=step)
    fwd_net, fwd_service = helper.last_network_seconds, helper.last_service_seconds
    t2 = time.perf_counter()
    emulation.transfer(link_nbytes(helper, "fwd", body_out))
    device = crossing.as_tuple(cut1)[0].device
    with emulation.compute():
        cut2 = incoming(body_out, device)
        logits = logits_of(crossing.call_part(tail, cut2))
        loss = loss_fn(logits, labels)
        loss.backward()
    grads = gradients_of(cut2)
    emulation.transfer(link_nbytes(helper, "bwd", grads))
    t3 = time.perf_counter()
    grad_cut1 = helper.backward(grads)
    bwd_net, bwd_service = helper.last_network_seconds, helper.last_service_seconds
    t4 = time.perf_counter()
    emulation.transfer(link_nbytes(helper, "bwd", grad_cut1))
    with emulation.compute():
        if isinstance(cut1, torch.Tensor):
            cut1.backward(grad_cut1.to(device=cut1.device, dtype=cut1.dtype))
        else:
            crossing.backward(cut1, grad_cut1)
        if exchange is None:
            optimizer.step()
    sync_service = 0.0
    if exchange is not None:
        exchange()
        # the all-reduce waits at the helper for the step's other clients: that wait is
        # the helper's service, not the client's own time (what the server measures)
        sync_service = helper.last_service_seconds
    t5 = time.perf_counter()
    n = int(labels.shape[0])
    correct = correct_count(logits, labels)
    totals.add(
        n, float(loss.detach()) * n, correct,
        (
            (t1 - t0) + fwd_net / 2,
            fwd_net / 2 + (t3 - t2) + bwd_net / 2,
            bwd_net / 2 + max((t5 - t4) - sync_service, 0.0),
        ),
        fwd_service + bwd_service + sync_service,
    )


def outgoing(cut1: Activation) -> Activation:
    """What goes to the helper: a tensor detached (as always), a tuple as it is (the wire
    flags its tensors that require a gradient, and detaches them)."""
    return cut1.detach() if isinstance(cut1, torch.Tensor) else cut1


def incoming(body_out: Activation, device: torch.device) -> Activation:
    """The body's output as the tail's input on ``device``: leaves, a tensor requiring a
    gradient (as always), in a tuple the tensors the helper flagged."""
    if isinstance(body_out, torch.Tensor):
        return body_out.to(device).requires_grad_(True)
    flags = crossing.needs_grad(body_out)
    return crossing.detach_inputs(crossing.to_device(body_out, device), flags)


def gradients_of(cut2: Activation) -> Activation:
    """What goes back to the helper: the tail input's gradient, or for a tuple the
    gradients of its tensors that require one (zeros where none reached them)."""
    if isinstance(cut2, torch.Tensor):
        assert cut2.grad is not None
        return cut2.grad
    return tuple(
        t.grad if t.grad is not None else torch.zeros_like(t)
        for t in crossing.flagged(cut2, crossing.needs_grad(cut2))
    )


def _train_micro_batched(
    head: nn.Module,
    tail: nn.Module,
    helper: HelperClient,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    emulation: Emulation,
    micro_batches: int,
    started: float,
) -> TrainResult:
    totals = RoundTotals()
    with MicroBatchStep(
        head, tail, helper, loss_fn, optimizer, micro_batches, emulation
    ) as stepper:
        for _ in range(epochs):
            for inputs, labels in totals.timed(batches):
                outcome = stepper.run(inputs, labels)
                totals.add(outcome.examples, outcome.loss_sum, outcome.correct,
                           (outcome.head_seconds, outcome.tail_seconds,
                            outcome.head_backward_seconds), outcome.wait_seconds)
    helper.finish()
    return totals.result(started)
