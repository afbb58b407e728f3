"""Which helper batches which clients in synchronous steps (global sampling with a planner).

In a synchronous step (:mod:`flsplit.runtime.sync_helper`) every helper runs one body on
the concatenated activations of its participating clients, and the step ends with the
slowest helper. With ``counts[s, k]`` samples of client ``k`` in step ``s``, helper ``h``
takes

``max_k (fixed_ms[k, h] + n * (client_ms[k] + transfer_ms[k, h])) + body_ms[h] * sum_k n``

over its clients ``k`` with ``n = counts[s, k] > 0``: the clients compute their heads and
tails and move their activations and gradients over their own links in parallel (a
per-message latency plus a per-sample time), so the helper waits for the slowest of
them, and the body computes on the sum of their samples. The round takes the sum over
steps of the slowest helper's time.

:func:`assign_helpers` balances that: a greedy start (the clients with the most samples
per step first, each to the helper that keeps the predicted round shortest and still
has memory for it), then local search (moving one client or swapping two) as long as the
predicted round gets shorter. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StepCosts", "SyncAssignment", "assign_helpers", "helper_step_times"]


@dataclass(frozen=True)
class StepCosts:
    """Per-sample and per-step costs of clients at helpers (milliseconds, MiB).

    Attributes
    ----------
    client_ms : numpy.ndarray
        ``(clients,)`` a client's own time per sample (head and tail, forward and
        backward; data loading).
    body_ms : numpy.ndarray
        ``(helpers,)`` a helper's body time per sample (forward and backward).
    transfer_ms : numpy.ndarray
        ``(clients, helpers)`` time per sample on the client's link to the helper (cut
        activations and gradients, both ways).
    fixed_ms : numpy.ndarray
        ``(clients, helpers)`` time per step in which the client takes part (link
        latencies).
    memory_mib : numpy.ndarray
        ``(clients,)`` memory a client takes on its helper.
    capacity_mib : numpy.ndarray
        ``(helpers,)`` memory a helper has for its clients (``inf``: no limit).
    """

    client_ms: np.ndarray
    body_ms: np.ndarray
    transfer_ms: np.ndarray
    fixed_ms: np.ndarray
    memory_mib: np.ndarray
    capacity_mib: np.ndarray

    def __post_init__(self) -> None:
        k, h = np.asarray(self.client_ms).size, np.asarray(self.body_ms).size
        shapes = {
            "client_ms": (k,),
            "body_ms": (h,),
            "transfer_ms": (k, h),
            "fixed_ms": (k, h),
            "memory_mib": (k,),
            "capacity_mib": (h,),
        }
        for name, shape in shapes.items():
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            if np.any(np.isnan(value)) or np.any(value < 0):
                raise ValueError(f"{name} must be >= 0, got {value.tolist()}")
            object.__setattr__(self, name, value)
        if h == 0:
            raise ValueError("no helper to assign clients to")

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return int(self.client_ms.size)

    @property
    def num_helpers(self) -> int:
        """Number of helpers."""
        return int(self.body_ms.size)


@dataclass
class SyncAssignment:
    """A planned assignment and its prediction.

    Attributes
    ----------
    helper : numpy.ndarray
        ``(clients,)`` index of each client's helper.
    step_ms : numpy.ndarray
        ``(steps,)`` predicted time of each step (its slowest helper).
    greedy_ms : float
        Predicted round time of the greedy start, before local search.
    """

    helper: np.ndarray
    step_ms: np.ndarray
    greedy_ms: float

    @property
    def round_ms(self) -> float:
        """Predicted time of the round's steps."""
        return float(self.step_ms.sum())


def helper_step_times(counts: np.ndarray, helper: np.ndarray, costs: StepCosts) -> np.ndarray:
    """Predicted time of every helper in every step.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` samples per step and client.
    helper : numpy.ndarray
        ``(clients,)`` each client's helper index.
    costs : StepCosts

    Returns
    -------
    numpy.ndarray
        ``(steps, helpers)`` milliseconds; a step lasts its row's maximum.
    """
    counts = np.asarray(counts, dtype=np.float64)
    helper = np.asarray(helper, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != costs.num_clients or helper.shape != (
        costs.num_clients,
    ):
        raise ValueError(
            f"counts {counts.shape} and helper {helper.shape} do not match "
            f"{costs.num_clients} clients"
        )
    clients = np.arange(costs.num_clients)
    transfer = costs.transfer_ms[clients, helper]
    fixed = costs.fixed_ms[clients, helper]
    body = costs.body_ms[helper]
    active = counts > 0
    # the clients' own parts and links run in parallel; the helper's body on the sum
    parallel = counts * (costs.client_ms + transfer)[None, :] + active * fixed[None, :]
    serial = counts * body[None, :]
    times = np.zeros((counts.shape[0], costs.num_helpers))
    for h in range(costs.num_helpers):
        mine = helper == h
        if mine.any():
            times[:, h] = parallel[:, mine].max(axis=1) + serial[:, mine].sum(axis=1)
    return times


def _round_ms(counts: np.ndarray, helper: np.ndarray, costs: StepCosts) -> float:
    return float(helper_step_times(counts, helper, costs).max(axis=1).sum())


def assign_helpers(
    counts: np.ndarray, costs: StepCosts, *, max_passes: int = 20
) -> SyncAssignment:
    """Assign every client to one helper so that the round's steps are shortest.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` the round's schedule.
    costs : StepCosts
        Clients' and helpers' costs.
    max_passes : int
        Passes of local search (each tries every move and swap once).

    Returns
    -------
    SyncAssignment

    Raises
    ------
    ValueError
        If a client fits no helper's memory next to the clients placed before it.
    """
    counts = np.asarray(counts, dtype=np.float64)
    k, h = costs.num_clients, costs.num_helpers
    helper = np.full(k, -1, dtype=np.int64)
    used = np.zeros(h)
    # Greedy: the heaviest clients (samples per step x their cost) first, each where
    # the partial round so far grows least.
    weight = counts.mean(axis=0) * (costs.client_ms + costs.transfer_ms.mean(axis=1) + 1e-9)
    for c in np.argsort(-weight, kind="stable"):
        best, best_ms = -1, np.inf
        placed = helper >= 0
        for x in range(h):
            if used[x] + costs.memory_mib[c] > costs.capacity_mib[x]:
                continue
            trial = helper.copy()
            trial[c] = x
            mask = placed.copy()
            mask[c] = True
            sub = StepCosts(
                costs.client_ms[mask], costs.body_ms, costs.transfer_ms[mask],
                costs.fixed_ms[mask], costs.memory_mib[mask], costs.capacity_mib,
            )
            ms = _round_ms(counts[:, mask], trial[mask], sub)
            if ms < best_ms - 1e-9:
                best, best_ms = x, ms
        if best < 0:
            raise ValueError(
                f"client {int(c)} needs {costs.memory_mib[c]:g} MiB, which no helper has left "
                f"(free: {(costs.capacity_mib - used).tolist()})"
            )
        helper[c] = best
        used[best] += costs.memory_mib[c]
    greedy_ms = _round_ms(counts, helper, costs)
    current = greedy_ms

    def fits(trial: np.ndarray) -> bool:
        load = np.bincount(trial, weights=costs.memory_mib, minlength=h)
        return bool(np.all(load <= costs.capacity_mib + 1e-9))

    for _ in range(max_passes):
        improved = False
        for c in range(k):  # move one client
            for x in range(h):
                if x == helper[c]:
                    continue
                trial = helper.copy()
                trial[c] = x
                if fits(trial):
                    ms = _round_ms(counts, trial, costs)
                    if ms < current - 1e-9:
                        helper, current, improved = trial, ms, True
        for a in range(k):  # swap two clients of different helpers
            for b in range(a + 1, k):
                if helper[a] == helper[b]:
                    continue
                trial = helper.copy()
                trial[a], trial[b] = helper[b], helper[a]
                if fits(trial):
                    ms = _round_ms(counts, trial, costs)
                    if ms < current - 1e-9:
                        helper, current, improved = trial, ms, True
        if not improved:
            break
    step_ms = helper_step_times(counts, helper, costs).max(axis=1)
    return SyncAssignment(helper=helper, step_ms=step_ms, greedy_ms=greedy_ms)
