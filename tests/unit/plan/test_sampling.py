"""Samplers of per-step batch composition (flsplit.plan.sampling.samplers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flsplit.plan.sampling.samplers import (
    SAMPLERS,
    FixedLocalSampler,
    LatentDirichletSampler,
    UniformGlobalSampler,
    make_sampler,
    step_times,
)

SIZES = [70, 30, 200, 5, 0, 113, 41]


def test_fixed_local_is_todays_behaviour() -> None:
    counts = FixedLocalSampler(SIZES, 32).epoch(0)
    assert counts.shape == (math.ceil(200 / 32), len(SIZES))
    assert counts.sum(axis=0).tolist() == SIZES
    assert counts[0].tolist() == [32, 30, 32, 5, 0, 32, 32]
    # a client contributes full local batches until its data runs out, then sits out
    for k, n in enumerate(SIZES):
        col = counts[:, k].tolist()
        full, rest = divmod(n, 32)
        assert col[:full] == [32] * full
        assert col[full:] == ([rest] if rest else []) + [0] * (len(col) - full - (rest > 0))
    assert np.array_equal(counts, FixedLocalSampler(SIZES, 32, seed=9).epoch(3))


@pytest.mark.parametrize("batch", [1, 7, 32, 489])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_uniform_sums_to_batch_and_uses_every_sample_once(batch: int, epoch: int) -> None:
    sampler = UniformGlobalSampler(SIZES, batch, seed=3)
    counts = sampler.epoch(epoch)
    total = sum(SIZES)
    assert counts.dtype.kind == "i" and counts.min() >= 0
    assert counts.shape == (math.ceil(total / batch), len(SIZES))
    rows = counts.sum(axis=1)
    assert np.all(rows[:-1] == batch)
    assert rows[-1] == total - batch * (len(rows) - 1) and 1 <= rows[-1] <= batch
    assert counts.sum(axis=0).tolist() == SIZES  # every sample exactly once per epoch
    assert counts[:, SIZES.index(0)].sum() == 0


def test_uniform_does_not_depend_on_number_of_clients() -> None:
    for clients in (2, 20, 200):
        counts = UniformGlobalSampler([50] * clients, 32, seed=1).epoch(0)
        assert np.all(counts.sum(axis=1)[:-1] == 32)


def test_uniform_matches_the_hypergeometric_mean() -> None:
    # each step's composition is a draw without replacement from the pool
    sampler = UniformGlobalSampler(SIZES, 32, seed=0)
    first = np.stack([sampler.epoch(e)[0] for e in range(3000)])
    expected = 32 * np.asarray(SIZES) / sum(SIZES)
    assert np.allclose(first.mean(axis=0), expected, atol=0.15)


def test_reproducible_and_epochs_differ() -> None:
    for name in SAMPLERS:
        a = make_sampler(name, SIZES, 16, seed=7, concentration=5.0)
        b = make_sampler(name, SIZES, 16, seed=7, concentration=5.0)
        assert np.array_equal(a.epoch(2), b.epoch(2))
        assert np.array_equal(a.epoch(1), b.epoch(1))  # order of requests does not matter
        if name != "fixed-local":
            assert not np.array_equal(a.epoch(0), a.epoch(1))
            other = make_sampler(name, SIZES, 16, seed=8, concentration=5.0)
            assert not np.array_equal(a.epoch(0), other.epoch(0))


@pytest.mark.parametrize("concentration", [0.5, 10.0, 1000.0])
def test_dirichlet_matches_its_mean(concentration: float) -> None:
    costs = [1.0, 4.0, 1.0, 1.0, 1.0, 4.0, 2.0]
    sampler = LatentDirichletSampler(
        SIZES, 32, seed=5, concentration=concentration, costs=costs, straggler_weight=1.0
    )
    speed = 1.0 / np.asarray(costs)
    mean = np.asarray(SIZES) * speed / (np.asarray(SIZES) * speed).sum()
    assert np.allclose(sampler.mean, mean)
    counts = np.concatenate([sampler.epoch(e)[:-1] for e in range(200)])
    assert np.all(counts.sum(axis=1) == 32)
    # Dirichlet-multinomial: var(count / B) = m (1 - m) (1 / B + (1 - 1 / B) / (alpha + 1))
    var = mean * (1 - mean) * (1 / 32 + (1 - 1 / 32) / (concentration + 1))
    tolerance = 4 * np.sqrt(var / counts.shape[0]) + 1e-12
    assert np.all(np.abs(counts.mean(axis=0) / 32 - mean) <= tolerance)
    assert np.allclose(counts.mean(axis=0) / 32, mean, atol=0.03)
    assert counts[:, SIZES.index(0)].sum() == 0


def test_dirichlet_concentration_controls_dispersion() -> None:
    sparse = LatentDirichletSampler(SIZES, 32, seed=1, concentration=0.1).epoch(0)
    dense = LatentDirichletSampler(SIZES, 32, seed=1, concentration=1000.0).epoch(0)
    assert (sparse > 0).sum(axis=1).mean() < (dense > 0).sum(axis=1).mean()
    uniform = UniformGlobalSampler(SIZES, 32).epoch(0)
    assert dense.shape == uniform.shape
    assert dense.sum() == uniform.sum() == sum(SIZES)


def test_dirichlet_straggler_weight_saves_time() -> None:
    sizes = [60] * 20
    costs = [4.0] * 5 + [1.0] * 15
    uniform = UniformGlobalSampler(sizes, 32, seed=2).steps(2000)
    lds = LatentDirichletSampler(
        sizes, 32, seed=2, concentration=1000.0, costs=costs, straggler_weight=1.0
    ).steps(2000)
    assert step_times(lds, costs).sum() < 0.75 * step_times(uniform, costs).sum()
    # without a straggler weight the mean is the pooled share
    plain = LatentDirichletSampler(sizes, 32, costs=costs, straggler_weight=0.0)
    assert np.allclose(plain.mean, 1 / 20)


def test_tiny_concentration_still_gives_full_batches() -> None:
    counts = LatentDirichletSampler(SIZES, 32, seed=0, concentration=1e-6).epoch(0)
    assert np.all(counts.sum(axis=1)[:-1] == 32)
    assert np.all((counts > 0).sum(axis=1) >= 1)


def test_steps_concatenates_epochs() -> None:
    sampler = UniformGlobalSampler(SIZES, 100, seed=4)
    steps = sampler.steps(10)
    per_epoch = sampler.epoch(0).shape[0]
    assert steps.shape == (10, len(SIZES))
    assert np.array_equal(steps[:per_epoch], sampler.epoch(0))
    assert np.array_equal(steps[per_epoch : 2 * per_epoch], sampler.epoch(1))


def test_step_times_is_the_slowest_participant() -> None:
    counts = np.array([[2, 0, 1], [0, 3, 0]])
    assert step_times(counts, [1.0, 4.0, 10.0]).tolist() == [10.0, 12.0]


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda: UniformGlobalSampler([], 32), "sizes"),
        (lambda: UniformGlobalSampler([[1, 2]], 32), "sizes"),
        (lambda: UniformGlobalSampler([3, -1], 32), "sizes"),
        (lambda: UniformGlobalSampler([0, 0], 32), "sizes"),
        (lambda: UniformGlobalSampler([1.5, 2], 32), "sizes"),
        (lambda: UniformGlobalSampler([3, 4], 0), "batch_size"),
        (lambda: UniformGlobalSampler([3, 4], 2.5), "batch_size"),
        (lambda: UniformGlobalSampler([3, 4], 2, seed=-1), "seed"),
        (lambda: UniformGlobalSampler([3, 4], 2).epoch(-1), "epoch"),
        (lambda: UniformGlobalSampler([3, 4], 2).steps(0), "num_steps"),
        (lambda: LatentDirichletSampler([3, 4], 2, concentration=0.0), "concentration"),
        (lambda: LatentDirichletSampler([3, 4], 2, concentration=math.inf), "concentration"),
        (lambda: LatentDirichletSampler([3, 4], 2, straggler_weight=-1.0), "straggler_weight"),
        (lambda: LatentDirichletSampler([3, 4], 2, costs=np.array([1.0])), "costs"),
        (lambda: LatentDirichletSampler([3, 4], 2, costs=np.array([1.0, 0.0])), "costs"),
        (lambda: make_sampler("global", [3, 4], 2), "sampler"),
        (lambda: step_times(np.ones((2, 3)), [1.0, 2.0]), "costs"),
    ],
)
def test_bad_arguments_are_named(call, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        call()


def test_sampler_from_run_config() -> None:
    from flsplit.config import sync_settings
    from flsplit.plan.sampling.samplers import sampler_from_settings

    def sampler_from_config(config, sizes, costs=None):
        return sampler_from_settings(sync_settings(config), sizes, costs)

    fixed = sampler_from_config({"batch-size": 8}, SIZES)
    assert isinstance(fixed, FixedLocalSampler) and fixed.batch_size == 8
    uniform = sampler_from_config({"sampler": "uniform", "batch-size": 8}, SIZES)
    assert isinstance(uniform, UniformGlobalSampler) and uniform.batch_size == 8
    lds = sampler_from_config(
        {
            "sampler": "dirichlet",
            "batch-size": 8,
            "global-batch-size": 64,
            "sampler-concentration": 5.0,
            "sampler-straggler-weight": 1.0,
            "sampler-seed": 3,
        },
        SIZES,
        costs=[1, 1, 1, 1, 1, 1, 4],
    )
    assert isinstance(lds, LatentDirichletSampler)
    assert (lds.batch_size, lds.concentration, lds.straggler_weight, lds.seed) == (64, 5.0, 1, 3)
    with pytest.raises(ValueError, match="sampler"):
        sampler_from_config({"sampler": "mine"}, SIZES)
