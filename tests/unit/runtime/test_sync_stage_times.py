"""A synchronous step's all-reduce wait is the helper's service, not the client's time."""

from __future__ import annotations

import torch
from torch import nn

from flsplit.runtime import trainer
from flsplit.runtime.trainer import RoundTotals, split_batch


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _EchoHelper:
    """The body is the identity; every call answers at once."""

    last_network_seconds = 0.0
    last_service_seconds = 0.0

    def forward(self, tensor, step=None):
        return tensor.detach()

    def backward(self, grads):
        return grads


def test_the_wait_in_the_all_reduce_counts_as_service(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(trainer.time, "perf_counter", clock)
    helper = _EchoHelper()

    def exchange() -> None:  # the helper holds the Sync 5 s for a straggler
        clock.now += 5.0
        helper.last_service_seconds = 5.0

    head, tail = nn.Linear(3, 4), nn.Linear(4, 2)
    optimizer = torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=0.1)
    totals = RoundTotals()
    split_batch(head, tail, helper, torch.ones(2, 3), torch.tensor([0, 1]),
                nn.functional.cross_entropy, optimizer, totals, step=0, exchange=exchange)
    assert totals.stages[2] == 0.0
    assert totals.service == 5.0
