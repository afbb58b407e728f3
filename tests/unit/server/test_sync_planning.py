"""The step planner's costs: helpers' fixed, per-participant and per-sample step costs
fitted to their measured steps."""

from __future__ import annotations

import numpy as np
import pytest

from flsplit.model.costs import PartCosts
from flsplit.plan.sampling.helper_assignment import StepCosts, helper_step_times
from flsplit.plan.sampling.samplers import make_sampler
from flsplit.protocol import TaskSpan
from flsplit.server.node_profiles import NodeProfiles
from flsplit.server.sync_planning import (
    HelperStepFit,
    fit_helper_steps,
    fit_round,
    helper_step_durations,
    step_costs,
)

COSTS = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 4_000, 1_000, 12.0)


def test_step_durations_run_from_the_end_of_the_helpers_previous_step() -> None:
    spans = [
        TaskSpan("step0", "fwd", 1.0, 1.1),
        TaskSpan("step0", "bwd", 1.2, 1.3),
        TaskSpan("step2", "fwd", 1.5, 1.6),
        TaskSpan("step2", "bwd", 1.7, 1.75),  # step 1 had none of its clients
        TaskSpan("step3", "bwd", 1.8, 2.0),
        TaskSpan("7", "fwd", 0.0, 9.0),  # a local-batch task is not a step
    ]
    assert helper_step_durations(spans) == {2: pytest.approx(450.0), 3: pytest.approx(250.0)}


def test_the_fit_recovers_fixed_per_participant_and_per_sample_costs() -> None:
    rng = np.random.default_rng(0)
    m = rng.integers(1, 12, 50)
    n = m * 2 + rng.integers(0, 10, 50)
    wait = rng.uniform(0, 30, 50)
    durations = 4.0 + 7.5 * m + 0.25 * n + 0.6 * wait + rng.normal(0, 0.05, 50)
    fit = fit_helper_steps(durations, m, n, wait)
    assert fit is not None and fit.steps == 50
    assert fit.wait_scale == pytest.approx(0.6, abs=0.01)
    assert fit.step_ms == pytest.approx(4.0, abs=0.2)
    assert fit.participant_ms == pytest.approx(7.5, abs=0.05)
    assert fit.sample_ms == pytest.approx(0.25, abs=0.02)


def test_the_fit_keeps_costs_non_negative_and_needs_a_few_steps() -> None:
    m = np.array([1, 2, 3, 4, 5, 6])
    n = np.array([2, 4, 6, 8, 10, 12])
    # no fixed cost and time falling with the samples: the best non-negative fit
    fit = fit_helper_steps(50.0 - 2.0 * n, m, n)
    assert fit is not None
    assert min(fit.step_ms, fit.participant_ms, fit.sample_ms) >= 0
    assert fit.step_ms == pytest.approx(np.mean(50.0 - 2.0 * n))
    assert fit.wait_scale == 1.0  # no wait given: nothing to scale
    assert fit_helper_steps([1.0, 2.0, 3.0], [1, 1, 1], [2, 2, 2]) is None
    with pytest.raises(ValueError, match="equally long"):
        fit_helper_steps([1.0, 2.0], [1], [1, 2])
    new, old = HelperStepFit(10.0, 2.0, 1.0, 8, 1.0), HelperStepFit(0.0, 4.0, 1.0, 8, 0.5)
    smoothed = new.blend(old, 0.6)
    assert (smoothed.step_ms, smoothed.participant_ms) == pytest.approx((6.0, 2.8))
    assert smoothed.wait_scale == pytest.approx(0.8)


def test_a_round_is_fitted_per_helper_with_the_clients_waits_taken_out() -> None:
    k = 10
    counts = make_sampler("uniform", [30] * k, batch_size=12, seed=1).epoch(0)
    helper = np.arange(k) % 2
    true = StepCosts(
        client_ms=np.linspace(0.5, 3.0, k), body_ms=np.array([0.2, 0.6]),
        transfer_ms=np.full((k, 2), 0.1), fixed_ms=np.full((k, 2), 1.0),
        memory_mib=np.zeros(k), capacity_mib=np.full(2, np.inf),
        step_ms=np.array([3.0, 1.0]), participant_ms=np.array([8.0, 2.0]),
        wait_scale=np.array([0.5, 1.5]),
    )
    times = helper_step_times(counts, helper, true)
    durations = {
        x: {s: float(times[s, x]) for s in range(1, counts.shape[0]) if times[s, x] > 0}
        for x in range(2)
    }
    fits = fit_round(counts, helper, true, durations)
    for x in range(2):
        assert fits[x].step_ms == pytest.approx(true.step_ms[x], abs=1e-6)
        assert fits[x].participant_ms == pytest.approx(true.participant_ms[x], abs=1e-6)
        assert fits[x].sample_ms == pytest.approx(true.body_ms[x], abs=1e-6)
        assert fits[x].wait_scale == pytest.approx(true.wait_scale[x], abs=1e-6)


def test_step_costs_take_the_fits_and_a_new_helper_the_fitted_ones_median() -> None:
    profiles = NodeProfiles(COSTS, lambda c, h: (0.0, 0.0))
    for h in (1, 2, 3):
        profiles.add_helper(h)
    for c in (10, 11):
        profiles.add_client(c)
    counts = np.array([[1, 2], [3, 0]])
    fits = {1: HelperStepFit(2.0, 5.0, 0.3, 20, 0.5), 2: HelperStepFit(4.0, 9.0, 0.1, 20, 0.7)}
    costs = step_costs(profiles, [10, 11], [1, 2, 3], counts, 8, helper_fit=fits)
    assert costs.wait_scale.tolist() == pytest.approx([0.5, 0.7, 0.6])
    assert costs.step_ms.tolist() == pytest.approx([2.0, 4.0, 3.0])
    assert costs.participant_ms.tolist() == pytest.approx([5.0, 9.0, 7.0])
    # the fitted per-sample cost replaces the body time; helper 3 keeps its profile's
    assert costs.body_ms.tolist() == pytest.approx([0.3, 0.1, (20.0 + 30.0) / 8])
    unfitted = step_costs(profiles, [10, 11], [1, 2, 3], counts, 8)
    assert unfitted.participant_ms.tolist() == [0.0, 0.0, 0.0]
    assert unfitted.wait_scale.tolist() == [1.0, 1.0, 1.0]


def test_a_helper_with_one_client_takes_the_per_client_cost_the_others_show() -> None:
    # helper 1 serves one client: its ~400 ms steps are not 400 ms per client
    k = 12
    counts = make_sampler("uniform", [30] * k, batch_size=24, seed=2).epoch(0)
    helper = np.zeros(k, dtype=np.int64)
    helper[0] = 1
    true = StepCosts(
        client_ms=np.full(k, 0.5), body_ms=np.array([0.1, 0.1]),
        transfer_ms=np.zeros((k, 2)), fixed_ms=np.zeros((k, 2)),
        memory_mib=np.zeros(k), capacity_mib=np.full(2, np.inf),
        step_ms=np.array([400.0, 400.0]), participant_ms=np.array([6.0, 6.0]),
    )
    times = helper_step_times(counts, helper, true)
    durations = {
        x: {s: float(times[s, x]) for s in range(1, counts.shape[0]) if times[s, x] > 0}
        for x in range(2)
    }
    fits = fit_round(counts, helper, true, durations)
    assert fits[0].participant_ms == pytest.approx(6.0, abs=1e-6)
    assert fits[1].participant_ms == pytest.approx(6.0)
    assert fits[1].step_ms == pytest.approx(400.0, abs=1.0)
    # alone it can only count everything per client
    alone = fit_round(counts, helper, true, {1: durations[1]})
    assert alone[1].step_ms == 0.0 and alone[1].participant_ms > 300
