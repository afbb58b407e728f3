"""A warmed-up process builds its first optimizer without importing anything: the
imports a first optimizer pulls in (seconds of CPU) are not left for a round to pay."""

import sys

import torch

from flsplit.runtime.warmup import warm_up, warmed_up


def test_after_warm_up_an_optimizer_imports_nothing():
    warm_up()
    assert warmed_up()
    before = set(sys.modules)
    torch.optim.Adam([torch.zeros(3, requires_grad=True)], lr=0.1)  # the app's own
    assert set(sys.modules) - before == set()
