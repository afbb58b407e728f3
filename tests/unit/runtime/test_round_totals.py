"""A round's figures describe the client's steady state: a warm-up round (a long set-up
before the first batch, a slow first batch) reports the stage, service and load means of
a round without them."""

import pytest

from flsplit.runtime.trainer import RoundTotals

STEADY = (0.010, 0.020, 0.030)  # seconds of stages 1, 3 and 5 of a batch


def _round(set_up_s: float, first: tuple[float, float, float], first_service: float,
           batches: int = 12) -> RoundTotals:
    """A round of ``batches`` batches, each after 2 ms in the loader (the first after
    ``set_up_s``), the first batch taking ``first``, the rest ``STEADY``."""
    totals = RoundTotals()
    totals.add_load(set_up_s)
    totals.add(8, 8.0, 4, first, first_service)
    for _ in range(batches - 1):
        totals.add_load(0.002)
        totals.add(8, 8.0, 4, STEADY, 0.005)
    totals.add_load(0.002)  # the loader found the epoch's end
    return totals


def _means(totals: RoundTotals) -> tuple[float, ...]:
    result = totals.result(started=0.0)
    return (result.stage1_ms, result.stage3_ms, result.stage5_ms, result.helper_service_ms,
            result.load_ms)


def test_a_warm_up_round_reports_the_means_of_a_steady_round():
    # set-up of 40 s (imports, the optimizer's first construction under emulation) and a
    # first batch 100x slower than the others
    warm_up = _means(_round(40.0, (1.0, 2.0, 3.0), 0.8))
    steady = _means(_round(0.002, STEADY, 0.005))
    assert warm_up == pytest.approx(steady)
    assert warm_up == pytest.approx((10.0, 20.0, 30.0, 5.0, 2.0 * 12 / 11))


def test_every_batch_counts_for_examples_loss_and_accuracy():
    result = _round(40.0, (1.0, 2.0, 3.0), 0.8).result(started=0.0)
    assert (result.batches, result.examples, result.loss, result.accuracy) == (12, 96, 1.0, 0.5)


def test_a_single_batch_is_all_there_is():
    totals = RoundTotals()
    totals.add_load(0.5)
    totals.add(8, 8.0, 4, (0.1, 0.2, 0.3), 0.05)
    result = totals.result(started=0.0)
    assert (result.stage1_ms, result.stage3_ms, result.stage5_ms) == pytest.approx(
        (100.0, 200.0, 300.0))
    assert (result.helper_service_ms, result.load_ms) == pytest.approx((50.0, 500.0))
    assert result.steady_batch_ms == 0.0


def _with_batches(own: list[tuple[float, tuple[float, float, float]]]) -> RoundTotals:
    """A round whose batches take ``(load, stages)`` seconds each (the first 8 examples)."""
    totals = RoundTotals()
    for load, stages in own:
        totals.add_load(load)
        totals.add(8, 8.0, 4, stages, 0.005)
    return totals


def test_a_batch_that_stalled_for_seconds_is_left_out_like_the_first():
    # one batch of 11 whose loader (or stage 1) took 9 s: a one-off pause
    batches = [(0.002, STEADY)] * 12
    stalled = [*batches[:6], (9.0, STEADY), *batches[7:]]
    also = [*batches[:6], (0.002, (9.0, 0.020, 0.030)), *batches[7:]]
    steady = _means(_with_batches(batches))
    assert _means(_with_batches(stalled)) == pytest.approx(steady)
    assert _means(_with_batches(also)) == pytest.approx(steady)
    assert _with_batches(stalled).result(0.0).batches == 12


def test_small_and_full_batches_and_a_slow_one_are_all_counted():
    # batches of 32, 32 and 1 examples (an epoch of 65): the one-example batch sends next
    # to nothing; a batch three times the others is slow, not stalled
    full, small = (0.002, (0.200, 0.060, 0.180)), (0.002, (0.010, 0.012, 0.009))
    slow = (0.002, (0.600, 0.180, 0.540))
    batches = [full, full, small] * 3 + [full, slow, small]
    totals = _with_batches(batches)
    assert totals.stalled() == []
    steady = batches[1:]
    assert totals.result(0.0).stage1_ms == pytest.approx(
        1000 * sum(b[1][0] for b in steady) / len(steady))
