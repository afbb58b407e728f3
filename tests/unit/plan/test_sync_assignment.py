"""Planning which helper batches which clients in synchronous steps."""

import numpy as np
import pytest

from flsplit.plan.sampling.helper_assignment import StepCosts, assign_helpers, helper_step_times
from flsplit.plan.sampling.samplers import make_sampler


def _costs(k: int, body: list[float], memory: float = 0.0, capacity: float = np.inf) -> StepCosts:
    h = len(body)
    return StepCosts(
        client_ms=np.full(k, 1.0),
        body_ms=np.array(body),
        transfer_ms=np.full((k, h), 0.1),
        fixed_ms=np.full((k, h), 2.0),
        memory_mib=np.full(k, memory),
        capacity_mib=np.full(h, capacity),
    )


def _counts(k: int = 12) -> np.ndarray:
    return make_sampler("uniform", [40] * k, batch_size=24, seed=3).epoch(0)


def test_slow_helper_gets_fewer_clients_and_samples() -> None:
    counts = _counts()
    costs = _costs(12, [1.0, 4.0])  # helper 1 is 4x slower per sample
    plan = assign_helpers(counts, costs)
    assert sorted(set(plan.helper.tolist())) == [0, 1]
    assert plan.helper.shape == (12,)  # every client exactly once
    slow, fast = plan.helper == 1, plan.helper == 0
    assert slow.sum() < fast.sum()
    assert counts[:, slow].sum() < counts[:, fast].sum() / 2
    # better than splitting the clients evenly (what round-robin does)
    even = np.arange(12) % 2
    even_ms = helper_step_times(counts, even, costs).max(axis=1).sum()
    assert plan.round_ms < even_ms
    assert plan.round_ms <= plan.greedy_ms + 1e-9


def test_prediction_is_the_slowest_helper_per_step() -> None:
    counts = np.array([[2, 0, 3], [1, 1, 0]])
    costs = _costs(3, [1.0, 4.0])
    times = helper_step_times(counts, np.array([0, 0, 1]), costs)
    # helper 0, step 0: only client 0 (2 samples): 2 + 2*(1+0.1) on its side, 2*1 body
    assert times[0, 0] == pytest.approx(2 + 2.2 + 2)
    assert times[0, 1] == pytest.approx(2 + 3 * 1.1 + 3 * 4)
    # step 1: clients 0 and 1 (1 sample each) in parallel, then the body on both
    assert times[1, 0] == pytest.approx(2 + 1.1 + 2 * 1)
    assert times[1, 1] == 0.0


def test_memory_limits_are_respected() -> None:
    counts = _counts()
    # the slow helper would get few clients, the fast one has room for 7 only
    costs = StepCosts(
        client_ms=np.full(12, 1.0),
        body_ms=np.array([1.0, 4.0]),
        transfer_ms=np.full((12, 2), 0.1),
        fixed_ms=np.full((12, 2), 2.0),
        memory_mib=np.full(12, 10.0),
        capacity_mib=np.array([70.0, 1000.0]),
    )
    plan = assign_helpers(counts, costs)
    assert (plan.helper == 0).sum() <= 7
    unlimited = assign_helpers(counts, _costs(12, [1.0, 4.0]))
    assert (unlimited.helper == 0).sum() > 7  # the limit is what kept it at 7
    with pytest.raises(ValueError, match="MiB"):
        assign_helpers(counts, StepCosts(
            client_ms=np.full(12, 1.0), body_ms=np.array([1.0]),
            transfer_ms=np.zeros((12, 1)), fixed_ms=np.zeros((12, 1)),
            memory_mib=np.full(12, 10.0), capacity_mib=np.array([50.0]),
        ))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="transfer_ms"):
        StepCosts(np.ones(2), np.ones(1), np.ones((2, 2)), np.ones((2, 1)), np.ones(2), np.ones(1))
