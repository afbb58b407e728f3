"""Synchronous-step mode: one global step equals a centralised step on the global batch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmarks.syncstep import ClientParts, SynchronousStep
from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN

CUTS = ("conv2", "fc2")  # head conv1; body conv2 .. fc1 with BatchNorm; tail fc2
LR = 0.1
TOL = 1e-6


def _data(sizes: list[int], seed: int = 0) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))
        for k, n in enumerate(sizes)
    }


def _centralised(model: nn.Module, batches: dict) -> tuple[dict, dict]:
    """One SGD step of the unsplit model on the concatenated batch (client order)."""
    active = [k for k in batches if batches[k][0].shape[0] > 0]
    x = torch.cat([batches[k][0] for k in active])
    y = torch.cat([batches[k][1] for k in active])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return grads, {k: v.clone() for k, v in model.state_dict().items()}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a.double() - b.double()).abs().max()) <= TOL


def _grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for m in modules for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("sizes", [[5, 3, 8], [7, 0, 1, 12], [16]])
def test_shared_step_equals_centralised_step(sizes: list[int]) -> None:
    torch.manual_seed(0)
    full = SmallCNN(1, 8).train()
    split = split_model(full, CUTS, torch.zeros(2, 1, 8, 8)).train()
    parts = {}
    for k in range(len(sizes)):
        head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
        opt = torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=LR)
        parts[k] = ClientParts(head, tail, opt)
    body_opt = torch.optim.SGD(split.body.parameters(), lr=LR)
    batches = _data(sizes)

    result = SynchronousStep(split.body, body_opt).step(parts, batches)
    ref_grads, ref_state = _centralised(full, batches)

    assert result.examples == sum(sizes)
    assert set(result.client_examples) == {k for k, n in enumerate(sizes) if n > 0}
    assert 0 <= result.correct <= sum(sizes)
    for k in parts:  # every copy, also one that sat out, took the centralised update
        grads = _grads(parts[k].head, split.body, parts[k].tail)
        assert set(grads) == set(ref_grads)
        for name, g in grads.items():
            assert _close(g, ref_grads[name]), name
        state = {
            **parts[k].head.state_dict(),
            **split.body.state_dict(),
            **parts[k].tail.state_dict(),
        }
        assert set(state) == set(ref_state)
        for name, value in state.items():  # weights and BatchNorm buffers of the body
            assert _close(value.float(), ref_state[name].float()), name


def test_loss_is_the_global_mean() -> None:
    torch.manual_seed(1)
    full = SmallCNN(1, 8).train()
    split = split_model(full, CUTS, torch.zeros(2, 1, 8, 8)).train()
    shared = ClientParts(split.head, split.tail)  # one copy used by every client
    batches = _data([4, 9, 2], seed=3)
    result = SynchronousStep(split.body).step(dict.fromkeys(batches, shared), batches)
    x = torch.cat([b[0] for b in batches.values()])
    y = torch.cat([b[1] for b in batches.values()])
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(full(x), y))
    assert abs(result.loss - expected) < 1e-5
    ref_grads, _ = _centralised(full, batches)
    for name, g in _grads(split.head, split.body, split.tail).items():
        assert _close(g, ref_grads[name]), name


def test_local_parts_average_to_the_centralised_step() -> None:
    torch.manual_seed(2)
    full = SmallCNN(1, 8).train()
    split = split_model(full, CUTS, torch.zeros(2, 1, 8, 8)).train()
    sizes = [6, 2, 9]
    parts = {}
    for k in range(len(sizes)):
        head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
        parts[k] = ClientParts(
            head, tail, torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=LR)
        )
    body_opt = torch.optim.SGD(split.body.parameters(), lr=LR)
    batches = _data(sizes, seed=5)
    SynchronousStep(split.body, body_opt, client_parts="local").step(parts, batches)
    _, ref_state = _centralised(full, batches)
    total = sum(sizes)
    for key in [*split.head.state_dict(), *split.tail.state_dict()]:
        if "num_batches_tracked" in key:
            continue
        avg = sum(
            n / total * {**parts[k].head.state_dict(), **parts[k].tail.state_dict()}[key]
            for k, n in enumerate(sizes)
        )
        assert _close(avg, ref_state[key]), key
    # each copy alone took a step on its own samples only: the copies differ
    assert not torch.equal(parts[0].tail.state_dict()["fc2.weight"], ref_state["fc2.weight"])


@pytest.mark.parametrize(
    ("parts", "batches", "bad"),
    [
        ({}, {"a": (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))}, "no parts"),
        (None, {0: (torch.zeros(2, 1, 8, 8), torch.zeros(3, dtype=torch.long))}, "labels"),
        (None, {0: (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))}, "no client"),
    ],
)
def test_bad_steps_raise(parts, batches, bad: str) -> None:
    split = split_model(SmallCNN(1, 8), CUTS, torch.zeros(2, 1, 8, 8))
    if parts is None:
        parts = {0: ClientParts(split.head, split.tail)}
    with pytest.raises(ValueError, match=bad):
        SynchronousStep(split.body).step(parts, batches)
    with pytest.raises(ValueError, match="client_parts"):
        SynchronousStep(split.body, client_parts="mine")


def test_batchnorm_in_a_head_normalises_per_client() -> None:
    """Documented caveat: client-side BatchNorm sees only its client's sub-batch."""
    torch.manual_seed(3)
    full = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).train()
    split = split_model(full, ["2", "5"], torch.zeros(2, 1, 8, 8)).train()
    head_bn = copy.deepcopy(split.head)
    shared = ClientParts(split.head, split.tail)
    batches = _data([5, 7], seed=4)
    SynchronousStep(split.body).step(dict.fromkeys(batches, shared), batches)
    # the head's running mean took one update per client sub-batch
    for x, _ in batches.values():
        head_bn(x)
    assert _close(split.head.state_dict()["1.running_mean"], head_bn.state_dict()["1.running_mean"])
    ref_grads, ref_state = _centralised(full, batches)
    assert not _close(split.head.state_dict()["1.running_mean"], ref_state["1.running_mean"])
    body_grads = _grads(split.body)
    assert any(not _close(g, ref_grads[n]) for n, g in body_grads.items())
