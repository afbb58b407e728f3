"""The helper worker: one task at a time, planned priority, work conserving."""

import threading

import pytest
import torch
from torch import nn

from flsplit.runtime.worker import HelperWorker, InputError, TaskError, TensorSpec


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


ENTERED = threading.Event()
RELEASE = threading.Event()


class _Gate(nn.Module):
    """A body that blocks on inputs marked with a large value until released, so the
    queue can fill up behind it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        if float(x.max()) > 100:
            ENTERED.set()
            RELEASE.wait(5)
        return self.lin(x)


def _run_behind_blocker(order, submit_order):
    ENTERED.clear()
    RELEASE.clear()
    worker = HelperWorker.replicated(_Gate(), ["a", "b", "c", "blocker"], _sgd, order=order)
    first = worker.submit("blocker", "fwd", torch.full((1, 2), 1000.0))
    assert ENTERED.wait(5)
    futures = [worker.submit(c, "fwd", torch.ones(1, 2)) for c in submit_order]
    RELEASE.set()
    for future in [first, *futures]:
        future.result(timeout=5)
    worker.stop()
    return [r.client for r in worker.executed]


def test_ready_tasks_run_in_planned_priority_order():
    order = [("c", "fwd"), ("b", "fwd"), ("a", "fwd"), ("blocker", "fwd")]
    assert _run_behind_blocker(order, ["a", "b", "c"]) == ["blocker", "c", "b", "a"]


def test_first_come_first_served_without_order():
    assert _run_behind_blocker(None, ["b", "c", "a"]) == ["blocker", "b", "c", "a"]


def test_each_client_trains_its_own_copy():
    body = nn.Linear(3, 2)
    initial = body.weight.detach().clone()
    worker = HelperWorker.replicated(body, ["a", "b"], _sgd)
    out = worker.submit("a", "fwd", torch.ones(4, 3)).result(5)
    grad_in = worker.submit("a", "bwd", torch.ones_like(out)).result(5)
    worker.stop()
    assert grad_in.shape == (4, 3)
    assert not torch.equal(worker.bodies["a"].module.weight, initial)
    assert torch.equal(worker.bodies["b"].module.weight, initial)
    assert torch.equal(body.weight, initial)
    assert worker.bodies["a"].examples == 4 and worker.bodies["a"].batches == 1


def test_unknown_client_and_backward_without_forward_fail():
    worker = HelperWorker({"a": nn.Linear(2, 2)}, _sgd)
    with pytest.raises(TaskError, match="not served"):
        worker.submit("x", "fwd", torch.ones(1, 2))
    with pytest.raises(TaskError, match="without a preceding forward"):
        worker.submit("a", "bwd", torch.ones(1, 2)).result(5)
    worker.stop()


def test_inputs_are_checked_against_the_body_input_and_the_pending_output():
    spec = TensorSpec((3,), torch.float32)
    worker = HelperWorker(
        {"a": nn.Linear(3, 2), "b": nn.Linear(3, 2)}, _sgd, input_specs={"a": spec}
    )
    try:
        for bad, field in [
            (torch.ones(4, 2), "tensor shape"),
            (torch.ones(4, 3, 1), "tensor shape"),
            (torch.ones(4, 3, dtype=torch.float64), "tensor dtype"),
            (torch.ones(0, 3), "batch dimension"),
        ]:
            with pytest.raises(InputError, match=field):
                worker.submit("a", "fwd", bad)
        out = worker.submit("a", "fwd", torch.ones(4, 3)).result(5)
        for bad, field in [
            (torch.ones(4, 3), "tensor shape"),
            (torch.ones(4, 2, dtype=torch.float16), "tensor dtype"),
        ]:
            with pytest.raises(InputError, match=field):
                worker.submit("a", "bwd", bad)
        assert worker.bodies["a"].pending_output is not None  # the batch is still in flight
        worker.submit("a", "bwd", torch.ones_like(out)).result(5)
        assert worker.bodies["a"].batches == 1
        # without a spec, the first forward that ran fixes it
        worker.submit("b", "fwd", torch.ones(2, 3)).result(5)
        assert worker.bodies["b"].input_spec == spec
    finally:
        worker.stop()


def test_a_batch_limit_is_enforced():
    worker = HelperWorker({"a": nn.Linear(2, 2)}, _sgd, max_batch=8)
    try:
        with pytest.raises(InputError, match="batch larger than 8"):
            worker.submit("a", "fwd", torch.ones(9, 2))
        worker.submit("a", "fwd", torch.ones(8, 2)).result(5)
    finally:
        worker.stop()
