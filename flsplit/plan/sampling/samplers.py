"""Per-step batch composition across clients: who contributes how many samples each step.

Three samplers, each returning for one epoch an integer array ``counts`` of shape
``(steps, clients)``: ``counts[s, k]`` is the number of samples client ``k`` contributes
to global step ``s`` (0 = the client sits that step out). Pure numpy, no torch.

``fixed-local`` (:class:`FixedLocalSampler`)
    Today's parallel split learning: every client contributes its own local batch each
    step until its data runs out (its last batch may be smaller). The global batch is
    ``clients x local batch`` while all clients have data, and shrinks to the largest
    clients alone at the end of an epoch: the epoch lasts as many steps as the largest
    client needs.
``uniform`` (:class:`UniformGlobalSampler`)
    Uniform global sampling: per epoch the pooled samples (client ``k`` holds
    ``sizes[k]`` of them) are shuffled and cut into consecutive global batches of
    ``batch_size``; a step's composition is how many of its samples each client holds.
    That is drawing the compositions without replacement from the pooled client sizes
    (sequential multivariate hypergeometric draws), so every global batch is
    distributed like a centralised uniform batch, the global batch stays ``batch_size``
    whatever the number of clients, every sample is used exactly once per epoch
    (``counts.sum(axis=0) == sizes``) and only the last step may be smaller.
``dirichlet`` (:class:`LatentDirichletSampler`)
    Latent Dirichlet sampling: each step draws latent client proportions
    ``p ~ Dirichlet(concentration * m)`` and then the composition
    ``counts ~ Multinomial(batch_size, p)``. The mean ``m`` is proportional to
    ``sizes[k] * (min(costs) / costs[k]) ** straggler_weight``: with
    ``straggler_weight = 0`` (or equal costs) it is the pooled share of every client,
    as in uniform sampling; a positive weight lowers the expected share of slow
    clients (per-sample cost ``costs[k]``), so a step waits less for them, at the price
    of global batches that deviate from the pooled data distribution. A large
    ``concentration`` keeps every step close to the mean, a small one gives sparse
    steps with few clients. An epoch is ``ceil(sum(sizes) / batch_size)`` steps of
    ``batch_size`` (the last one smaller, as in uniform sampling), so epochs have the
    same number of steps and samples as uniform sampling; a client asked for more
    samples than it has left starts a new local pass over its data.

Every sampler is reproducible: epoch ``e`` of a sampler with seed ``s`` is the same array
whenever and in whatever order it is asked for (its generator is seeded with
``(s, e)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flsplit.config import SyncSettings

__all__ = [
    "SAMPLERS",
    "FixedLocalSampler",
    "LatentDirichletSampler",
    "Sampler",
    "UniformGlobalSampler",
    "make_sampler",
    "round_schedule",
    "sampler_from_settings",
    "step_times",
]

SAMPLERS = ("fixed-local", "uniform", "dirichlet")


def _check_sizes(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(sizes)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"sizes must be a non-empty 1-D sequence of counts, got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer) and (
        not np.all(np.isfinite(array)) or np.any(array != np.round(array))
    ):
        raise ValueError(f"sizes must be whole numbers, got {array.tolist()}")
    array = array.astype(np.int64)
    if np.any(array < 0):
        raise ValueError(f"sizes must be >= 0, got {array.tolist()}")
    if array.sum() == 0:
        raise ValueError("sizes must hold at least one sample in total, got all zeros")
    return array


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    return int(epoch)


@dataclass(frozen=True, eq=False)
class Sampler:
    """Base of the samplers: client sizes, global (or local) batch size and a seed.

    Parameters
    ----------
    sizes : sequence of int
        Training samples per client.
    batch_size : int
        Global batch size (for :class:`FixedLocalSampler`: each client's local batch).
    seed : int
        Seed of the per-epoch generators.
    """

    sizes: np.ndarray
    batch_size: int
    seed: int = 0
    name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", _check_sizes(self.sizes))
        object.__setattr__(self, "batch_size", _check_positive_int("batch_size", self.batch_size))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def num_clients(self) -> int:
        """Number of clients (columns of every epoch)."""
        return int(self.sizes.size)

    @property
    def total(self) -> int:
        """Samples over all clients."""
        return int(self.sizes.sum())

    def rng(self, epoch: int) -> np.random.Generator:
        """The generator of ``epoch`` (seeded with ``(seed, epoch)``)."""
        return np.random.default_rng([int(self.seed), _check_epoch(epoch)])

    def epoch(self, epoch: int = 0) -> np.ndarray:
        """Per-step per-client sample counts of ``epoch``.

        Parameters
        ----------
        epoch : int
            Epoch index (>= 0).

        Returns
        -------
        np.ndarray
            Integer array of shape ``(steps, clients)``; no row is all zeros.
        """
        raise NotImplementedError

    def steps(self, num_steps: int, first_epoch: int = 0) -> np.ndarray:
        """The first ``num_steps`` steps of consecutive epochs from ``first_epoch`` on.

        Parameters
        ----------
        num_steps : int
            Steps wanted (epochs are concatenated and the last one cut).
        first_epoch : int
            Epoch to start with.

        Returns
        -------
        np.ndarray
            Integer array of shape ``(num_steps, clients)``.
        """
        num_steps = _check_positive_int("num_steps", num_steps)
        chunks: list[np.ndarray] = []
        have = 0
        epoch = _check_epoch(first_epoch)
        while have < num_steps:
            chunk = self.epoch(epoch)
            chunks.append(chunk)
            have += chunk.shape[0]
            epoch += 1
        return np.concatenate(chunks)[:num_steps]


@dataclass(frozen=True, eq=False)
class FixedLocalSampler(Sampler):
    """Fixed local batches: each client contributes ``batch_size`` samples each step.

    A client's last batch of the epoch holds what is left; afterwards it sits the
    remaining steps out. The epoch lasts ``ceil(max(sizes) / batch_size)`` steps. The
    result does not depend on the seed.
    """

    name: str = field(default="fixed-local", init=False)

    def epoch(self, epoch: int = 0) -> np.ndarray:
        _check_epoch(epoch)
        steps = math.ceil(int(self.sizes.max()) / self.batch_size)
        start = np.arange(steps, dtype=np.int64)[:, None] * self.batch_size
        return np.clip(self.sizes[None, :] - start, 0, self.batch_size)


@dataclass(frozen=True, eq=False)
class UniformGlobalSampler(Sampler):
    """Uniform global sampling: global batches drawn without replacement from the pool.

    ``ceil(sum(sizes) / batch_size)`` steps; each row sums to ``batch_size`` except
    possibly the last; each column sums to that client's size.
    """

    name: str = field(default="uniform", init=False)

    def epoch(self, epoch: int = 0) -> np.ndarray:
        owners = np.repeat(np.arange(self.num_clients), self.sizes)
        owners = self.rng(epoch).permutation(owners)
        steps = math.ceil(owners.size / self.batch_size)
        step_of = np.arange(owners.size) // self.batch_size
        counts = np.zeros((steps, self.num_clients), dtype=np.int64)
        np.add.at(counts, (step_of, owners), 1)
        return counts


@dataclass(frozen=True, eq=False)
class LatentDirichletSampler(Sampler):
    """Latent Dirichlet sampling with a straggler weight.

    Parameters
    ----------
    sizes, batch_size, seed
        See :class:`Sampler`.
    concentration : float
        Total Dirichlet concentration ``alpha`` (> 0): the latent proportions are
        ``Dirichlet(alpha * mean)``. Large values keep every step close to the mean
        composition, small ones give sparse steps.
    costs : sequence of float, optional
        Per-sample time of each client (any unit; default all equal). Only ratios matter.
    straggler_weight : float
        Exponent ``gamma >= 0`` of the speed factor: the mean share of client ``k`` is
        proportional to ``sizes[k] * (min(costs) / costs[k]) ** gamma``. 0 ignores the
        costs (mean = pooled share); 1 makes shares proportional to data times speed.
    """

    concentration: float = 100.0
    costs: np.ndarray | None = None
    straggler_weight: float = 0.0
    name: str = field(default="dirichlet", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = self.concentration
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
            raise ValueError(f"concentration must be a positive number, got {alpha!r}")
        if not math.isfinite(float(alpha)) or alpha <= 0:
            raise ValueError(f"concentration must be a positive finite number, got {alpha!r}")
        gamma = self.straggler_weight
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number)):
            raise ValueError(f"straggler_weight must be a number >= 0, got {gamma!r}")
        if not math.isfinite(float(gamma)) or gamma < 0:
            raise ValueError(f"straggler_weight must be a finite number >= 0, got {gamma!r}")
        if self.costs is None:
            costs = np.ones(self.num_clients)
        else:
            costs = np.asarray(self.costs, dtype=np.float64)
            if costs.shape != self.sizes.shape:
                raise ValueError(
                    f"costs must have one entry per client ({self.num_clients}), "
                    f"got shape {costs.shape}"
                )
            if not np.all(np.isfinite(costs)) or np.any(costs <= 0):
                raise ValueError(f"costs must be positive finite numbers, got {costs.tolist()}")
        object.__setattr__(self, "costs", costs)

    @property
    def mean(self) -> np.ndarray:
        """Expected share of each client in a step (sums to 1)."""
        assert self.costs is not None
        speed = (self.costs.min() / self.costs) ** float(self.straggler_weight)
        weights = self.sizes * speed
        return weights / weights.sum()

    def epoch(self, epoch: int = 0) -> np.ndarray:
        rng = self.rng(epoch)
        steps = math.ceil(self.total / self.batch_size)
        batch = np.full(steps, self.batch_size, dtype=np.int64)
        batch[-1] = self.total - self.batch_size * (steps - 1)
        mean = self.mean
        active = mean > 0
        alpha = float(self.concentration) * mean[active]
        counts = np.zeros((steps, self.num_clients), dtype=np.int64)
        latent = rng.dirichlet(alpha, size=steps)
        for s in range(steps):
            p = latent[s]
            total = p.sum()
            if not np.isfinite(total) or total <= 0:  # every gamma draw underflowed
                p = np.zeros_like(p)
                p[rng.choice(p.size, p=mean[active])] = 1.0
                total = 1.0
            counts[s, active] = rng.multinomial(batch[s], p / total)
        return counts


def make_sampler(
    name: str,
    sizes: Sequence[int] | np.ndarray,
    batch_size: int,
    seed: int = 0,
    *,
    concentration: float = 100.0,
    costs: Sequence[float] | np.ndarray | None = None,
    straggler_weight: float = 0.0,
) -> Sampler:
    """Build a sampler by name (for run configs and the command line).

    Parameters
    ----------
    name : str
        One of :data:`SAMPLERS`: ``fixed-local``, ``uniform`` or ``dirichlet``.
    sizes, batch_size, seed
        See :class:`Sampler`.
    concentration, costs, straggler_weight
        See :class:`LatentDirichletSampler` (ignored by the other samplers).

    Returns
    -------
    Sampler

    Raises
    ------
    ValueError
        For an unknown name or a bad argument (the message names it).
    """
    if name == "fixed-local":
        return FixedLocalSampler(sizes, batch_size, seed)
    if name == "uniform":
        return UniformGlobalSampler(sizes, batch_size, seed)
    if name == "dirichlet":
        return LatentDirichletSampler(
            sizes,
            batch_size,
            seed,
            concentration=concentration,
            costs=None if costs is None else np.asarray(costs, dtype=np.float64),
            straggler_weight=straggler_weight,
        )
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def step_times(counts: np.ndarray, costs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Emulated duration of each step: the slowest participating client.

    Clients compute in parallel, client ``k`` spends ``counts[s, k] * costs[k]`` in step
    ``s``, and the step waits for the last one.

    Parameters
    ----------
    counts : np.ndarray
        ``(steps, clients)`` sample counts.
    costs : sequence of float
        Per-sample time of each client.

    Returns
    -------
    np.ndarray
        ``(steps,)`` float array.
    """
    counts = np.asarray(counts)
    costs = np.asarray(costs, dtype=np.float64)
    if counts.ndim != 2 or costs.shape != (counts.shape[1],):
        raise ValueError(
            f"costs must have one entry per column of counts ({counts.shape}), "
            f"got shape {costs.shape}"
        )
    return (counts * costs[None, :]).max(axis=1)


def sampler_from_settings(
    settings: SyncSettings,
    sizes: Sequence[int] | np.ndarray,
    costs: Sequence[float] | np.ndarray | None = None,
) -> Sampler:
    """Build the sampler a run config's global-sampling settings ask for.

    Parameters
    ----------
    settings : SyncSettings
        :func:`flsplit.config.sync_settings` of the run config: the sampler, its global
        batch (a client's local batch for ``fixed-local``), seed, concentration and
        straggler weight.
    sizes : sequence of int
        Training samples per client, in the order of the sampler's columns.
    costs : sequence of float, optional
        Per-sample time of each client (for the straggler weight).

    Returns
    -------
    Sampler
    """
    local = settings.sampler == "fixed-local"
    return make_sampler(
        settings.sampler,
        sizes,
        settings.batch_size if local else settings.global_batch_size,
        settings.seed,
        concentration=settings.concentration,
        costs=costs,
        straggler_weight=settings.straggler_weight,
    )


def round_schedule(
    sampler: Sampler, server_round: int, steps_per_round: int = 0, epochs_per_round: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The schedule of one round and what every client drew in the rounds before.

    Round ``r`` (from 1) takes the next ``steps_per_round`` steps of the sampler's
    consecutive epochs or, if that is 0, its next ``epochs_per_round`` epochs.

    Parameters
    ----------
    sampler : Sampler
        The round's sampler (its columns are the round's clients).
    server_round : int
        Round number, from 1.
    steps_per_round, epochs_per_round : int
        Length of a round.

    Returns
    -------
    counts : np.ndarray
        ``(steps, clients)`` samples per step and client of the round.
    offsets : np.ndarray
        ``(clients,)`` samples each client contributed in earlier rounds, so that it can
        go on with its draws where it stopped.
    """
    server_round = _check_positive_int("server_round", server_round)
    if steps_per_round > 0:
        first = (server_round - 1) * int(steps_per_round)
        stream = sampler.steps(first + int(steps_per_round))
        return stream[first:], stream[:first].sum(axis=0)
    epochs = _check_positive_int("epochs_per_round", epochs_per_round)
    first = (server_round - 1) * epochs
    offsets = np.zeros(sampler.num_clients, dtype=np.int64)
    for e in range(first):
        offsets += sampler.epoch(e).sum(axis=0)
    counts = np.concatenate([sampler.epoch(e) for e in range(first, first + epochs)])
    return counts, offsets
