"""Helper memory modes: the shared body with recompute at backward time."""

import copy

import pytest
import torch
from torch import nn

from flsplit.runtime.worker import HelperWorker, TaskError


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _body() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )


def _one_step(worker: HelperWorker, client: str, x: torch.Tensor, g: torch.Tensor):
    out = worker.submit(client, "fwd", x).result(timeout=10)
    grad = worker.submit(client, "bwd", g).result(timeout=10)
    return out, grad


def test_shared_recompute_equals_kept_graph_for_one_client():
    body = _body()
    x = torch.randn(3, 4, 6, 6)
    g = torch.randn(3, 5)
    results = {}
    for mode in ("per-client", "shared"):
        module = copy.deepcopy(body)
        worker = HelperWorker({"c": module}, _sgd, memory_mode=mode)
        torch.manual_seed(123)  # same dropout mask stream for both modes
        out1, grad1 = _one_step(worker, "c", x, g)
        out2, grad2 = _one_step(worker, "c", x + 0.5, g)  # second step uses momentum
        worker.stop()
        results[mode] = (out1, grad1, out2, grad2, module.state_dict())
    kept, lean = results["per-client"], results["shared"]
    for a, b in zip(kept[:4], lean[:4], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for key, value in kept[4].items():
        # weights and BatchNorm buffers (updated once per batch, not twice)
        torch.testing.assert_close(value, lean[4][key], atol=1e-6, rtol=0, msg=key)


def test_shared_forward_keeps_only_the_input():
    body = _body()
    worker = HelperWorker.shared(body, ["a", "b"], _sgd)
    x = torch.randn(2, 4, 6, 6)
    out = worker.submit("a", "fwd", x).result(timeout=10)
    state = worker.bodies["a"]
    assert out.grad_fn is None and not out.requires_grad
    assert state.pending_input is not None and state.pending_input.grad_fn is None
    assert not state.pending_input.requires_grad
    assert state.pending_output.device.type == "meta"
    assert tuple(state.pending_output.shape) == (2, 5)
    with pytest.raises(TaskError):
        worker.check("b", "bwd", torch.zeros(2, 5))  # b has no forward in flight
    worker.stop()


def _param_storages(worker: HelperWorker) -> int:
    return len({p.untyped_storage().data_ptr() for s in worker.bodies.values()
                for p in s.module.parameters()})


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_shared_memory_does_not_grow_by_a_body_per_client(clients):
    body = _body()
    names = [f"c{i}" for i in range(clients)]
    worker = HelperWorker.shared(body, names, _sgd)
    x = torch.randn(2, 4, 6, 6)
    base = worker.held_bytes()
    for name in names:  # every client in flight at once
        worker.submit(name, "fwd", x.clone()).result(timeout=10)
    in_flight = worker.held_bytes()
    assert _param_storages(worker) == len(list(body.parameters()))
    assert len({id(s.optimizer) for s in worker.bodies.values()}) == 1
    # one cut-1 input per in-flight client, nothing else
    assert in_flight - base == clients * x.numel() * x.element_size()
    for name in names:
        worker.submit(name, "bwd", torch.ones(2, 5)).result(timeout=10)
    body_bytes = sum(p.numel() * p.element_size() for p in body.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in body.buffers())
    # after the round: weights, buffers, one momentum buffer; gradients are freed
    assert worker.held_bytes() == 2 * body_bytes + buffer_bytes
    worker.stop()


def test_per_client_mode_holds_one_body_per_client():
    body = _body()
    worker = HelperWorker.replicated(body, ["a", "b", "c"], _sgd)
    assert _param_storages(worker) == 3 * len(list(body.parameters()))
    worker.stop()


def test_shared_mode_is_sequential_sgd_in_executed_order():
    body = nn.Linear(3, 2)
    reference = copy.deepcopy(body)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    worker = HelperWorker.shared(body, ["a", "b"], _sgd)
    for name, seed in (("a", 1), ("b", 2), ("a", 3)):
        gen = torch.Generator().manual_seed(seed)
        x, g = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
        _one_step(worker, name, x, g)
        opt.zero_grad()
        reference(x).backward(g)
        opt.step()
    worker.stop()
    torch.testing.assert_close(body.weight, reference.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(body.bias, reference.bias, atol=1e-6, rtol=0)
    assert worker.bodies["a"].batches == 2 and worker.bodies["b"].batches == 1


def test_unknown_memory_mode_is_refused():
    with pytest.raises(ValueError, match="memory_mode"):
        HelperWorker({"a": nn.Linear(1, 1)}, _sgd, memory_mode="tiny")
