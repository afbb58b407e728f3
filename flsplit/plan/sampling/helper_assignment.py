"""Which helper batches which clients in synchronous steps (global sampling with a planner).

In a synchronous step (:mod:`flsplit.runtime.sync_helper`) every helper runs one body on
the concatenated activations of its participating clients. With ``counts[s, k]`` samples
of client ``k`` in step ``s``, helper ``h`` takes

``wait_scale[h] * max_k (fixed_ms[k, h] + n * (client_ms[k] + transfer_ms[k, h]))
+ step_ms[h] + participant_ms[h] * m + body_ms[h] * sum_k n``

over its ``m`` clients ``k`` with ``n = counts[s, k] > 0`` (nothing when ``m = 0``): the
clients compute their heads and tails and move their activations and gradients over
their own links in parallel (a per-message latency plus a per-sample time), so the
helper waits for the slowest of them (``wait_scale``, 1 unless measured otherwise,
corrects that prediction by what the helper's steps showed); the helper pays a fixed
cost per step (its barrier and reduction bookkeeping), a fixed cost per participant
(handling its forward, backward and sync requests) and the body on the sum of the
samples. A helper's steps only wait for its own clients, so the helpers run their steps
independently and the round lasts as long as the helper with the largest sum of step
times.

:func:`assign_helpers` balances that: a greedy start (the clients with the most samples
per step first, each to the helper that keeps the predicted round shortest and still
has memory for it), then local search (moving one client or swapping two) as long as the
predicted round gets shorter, from the greedy start and from a baseline assignment
(round-robin); it never returns an assignment predicted slower than the baseline.

Balance. Each helper steps its own body copy on its clients' share of every step, and the
copies are averaged at the end of the round weighted by the samples each trained; still,
a copy trained on a small share (few clients, small noisy sub-batches, few labels on
non-IID data) drifts, and a very uneven split learns worse (examples/noniid: splits
17/3 and 15/5 of 20 clients cost two points of accuracy). With ``share_tolerance=t``
every helper's share of the round's samples must stay within ``(1 +- t)`` times its fair
share (the total over the number of helpers): the local search first shrinks the
samples outside these bounds, then the round time; the baseline stays the fallback, so
the result is still never predicted slower than it (when the baseline itself is outside
the bounds, the result is at most as far outside).
Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SHARE_TOLERANCE",
    "StepCosts",
    "SyncAssignment",
    "assign_helpers",
    "helper_step_times",
    "out_of_share",
    "predicted_round_ms",
]

SHARE_TOLERANCE = 0.2
"""The planner's bound on a helper's share of the round's samples: within 20 % of its fair
share (40 % to 60 % with two helpers)."""

# Samples outside the share bounds weigh more than any round time (milliseconds), so the
# search reduces them first.
_OUT_OF_SHARE_MS = 1e9


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
    step_ms : numpy.ndarray, optional
        ``(helpers,)`` a helper's fixed time per step it takes part in (default 0).
    participant_ms : numpy.ndarray, optional
        ``(helpers,)`` a helper's time per participating client and step (default 0).
    wait_scale : numpy.ndarray, optional
        ``(helpers,)`` factor on the predicted wait for a step's slowest client
        (default 1).
    """

    client_ms: np.ndarray
    body_ms: np.ndarray
    transfer_ms: np.ndarray
    fixed_ms: np.ndarray
    memory_mib: np.ndarray
    capacity_mib: np.ndarray
    step_ms: np.ndarray | None = None
    participant_ms: np.ndarray | None = None
    wait_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        k, h = np.asarray(self.client_ms).size, np.asarray(self.body_ms).size
        for name, default in (("step_ms", 0.0), ("participant_ms", 0.0), ("wait_scale", 1.0)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(h, default))
        shapes = {
            "client_ms": (k,),
            "body_ms": (h,),
            "transfer_ms": (k, h),
            "fixed_ms": (k, h),
            "memory_mib": (k,),
            "capacity_mib": (h,),
            "step_ms": (h,),
            "participant_ms": (h,),
            "wait_scale": (h,),
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

    def of_clients(self, mask: np.ndarray) -> StepCosts:
        """The costs of the clients selected by ``mask`` (all helpers)."""
        return StepCosts(
            self.client_ms[mask], self.body_ms, self.transfer_ms[mask], self.fixed_ms[mask],
            self.memory_mib[mask], self.capacity_mib, self.step_ms, self.participant_ms,
            self.wait_scale,
        )


@dataclass
class SyncAssignment:
    """A planned assignment and its prediction.

    Attributes
    ----------
    helper : numpy.ndarray
        ``(clients,)`` index of each client's helper.
    helper_ms : numpy.ndarray
        ``(helpers,)`` predicted time of each helper's steps; the round lasts the largest.
    greedy_ms : float
        Predicted round time of the greedy start, before local search.
    baseline_ms : float or None
        Predicted round time of the baseline assignment (``None``: none given, or it
        does not fit the helpers' memory).
    out_of_share : float
        Fraction of the round's samples outside the helpers' share bounds (0 when no
        bound was given or the plan keeps it).
    """

    helper: np.ndarray
    helper_ms: np.ndarray
    greedy_ms: float
    baseline_ms: float | None = None
    out_of_share: float = 0.0

    @property
    def round_ms(self) -> float:
        """Predicted time of the round's steps (its slowest helper's)."""
        return float(self.helper_ms.max()) if self.helper_ms.size else 0.0


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
        ``(steps, helpers)`` milliseconds (0 where a helper has no participant); the
        round lasts the largest column sum.
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
    # the clients' own parts and links run in parallel; the helper's body on the sum,
    # and its own handling per participant and per step one after the other
    parallel = counts * (costs.client_ms + transfer)[None, :] + active * fixed[None, :]
    serial = counts * body[None, :] + active * costs.participant_ms[helper][None, :]
    times = np.zeros((counts.shape[0], costs.num_helpers))
    for h in range(costs.num_helpers):
        mine = helper == h
        if mine.any():
            busy = active[:, mine].any(axis=1)
            times[:, h] = busy * (
                costs.wait_scale[h] * parallel[:, mine].max(axis=1)
                + serial[:, mine].sum(axis=1)
                + costs.step_ms[h]
            )
    return times


def predicted_round_ms(counts: np.ndarray, helper: np.ndarray, costs: StepCosts) -> float:
    """Predicted round time of an assignment: the largest sum of a helper's step times.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` samples per step and client.
    helper : numpy.ndarray
        ``(clients,)`` each client's helper index.
    costs : StepCosts

    Returns
    -------
    float
        Milliseconds.
    """
    return float(helper_step_times(counts, helper, costs).sum(axis=0).max(initial=0.0))


_round_ms = predicted_round_ms


def _score(counts: np.ndarray, helper: np.ndarray, costs: StepCosts) -> float:
    """The search's objective: the round time, ties broken by the helpers' total time
    (so that moves off a helper that is not the slowest still count)."""
    per_helper = helper_step_times(counts, helper, costs).sum(axis=0)
    return float(per_helper.max(initial=0.0) + 1e-6 * per_helper.sum())


def out_of_share(
    counts: np.ndarray, helper: np.ndarray, num_helpers: int, tolerance: float | None
) -> float:
    """Fraction of the round's samples by which the helpers' shares leave their bounds.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` samples per step and client.
    helper : numpy.ndarray
        ``(clients,)`` each client's helper index.
    num_helpers : int
        Number of helpers (a helper without clients has a share of 0).
    tolerance : float or None
        Each helper's samples must lie within ``(1 +- tolerance)`` times the total over
        ``num_helpers``; ``None``: no bound (returns 0).

    Returns
    -------
    float
        Sum over the helpers of their samples above the upper or below the lower bound,
        over the round's samples (0: every share within its bounds).
    """
    if tolerance is None:
        return 0.0
    per_client = np.asarray(counts, dtype=np.float64).sum(axis=0)
    total = float(per_client.sum())
    if total <= 0:
        return 0.0
    shares = np.bincount(np.asarray(helper, dtype=np.int64), weights=per_client,
                         minlength=num_helpers)
    fair = total / num_helpers
    outside = np.maximum(np.abs(shares - fair) - tolerance * fair, 0.0)
    return float(outside.sum() / total)


def assign_helpers(
    counts: np.ndarray,
    costs: StepCosts,
    *,
    baseline: np.ndarray | None = None,
    max_passes: int = 20,
    share_tolerance: float | None = None,
) -> SyncAssignment:
    """Assign every client to one helper so that the round's steps are shortest.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` the round's schedule.
    costs : StepCosts
        Clients' and helpers' costs.
    baseline : numpy.ndarray, optional
        ``(clients,)`` an assignment to beat (the round-robin one). Local search also
        starts from it, and the result is never predicted slower than it.
    max_passes : int
        Passes of local search (each tries every move and swap once).
    share_tolerance : float, optional
        Bound each helper's share of the round's samples to ``(1 +- share_tolerance)``
        times its fair share (:func:`out_of_share`; the planner passes
        :data:`SHARE_TOLERANCE`); ``None``: the round time alone.

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
    if share_tolerance is not None and not share_tolerance >= 0:
        raise ValueError(f"share_tolerance must be >= 0, got {share_tolerance}")
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
            ms = _score(counts[:, mask], trial[mask], costs.of_clients(mask))
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

    def fits(trial: np.ndarray) -> bool:
        load = np.bincount(trial, weights=costs.memory_mib, minlength=h)
        return bool(np.all(load <= costs.capacity_mib + 1e-9))

    starts = [helper]
    baseline_ms = None
    if baseline is not None:
        baseline = np.asarray(baseline, dtype=np.int64)
        if baseline.shape != (k,) or np.any(baseline < 0) or np.any(baseline >= h):
            raise ValueError(f"baseline must be {k} helper indices in [0, {h}), got {baseline}")
        if fits(baseline):
            baseline_ms = _round_ms(counts, baseline, costs)
            starts.append(baseline.copy())
    def score(trial: np.ndarray) -> float:
        outside = out_of_share(counts, trial, h, share_tolerance)
        return _score(counts, trial, costs) + _OUT_OF_SHARE_MS * outside

    best_helper, best_score = helper, np.inf
    for start in starts:
        found, found_score = _local_search(costs, start, fits, score, max_passes)
        if found_score < best_score - 1e-9:
            best_helper, best_score = found, found_score
    if baseline_ms is not None and _round_ms(counts, best_helper, costs) > baseline_ms:
        # the tie-break traded a hair of round time for total time, or keeping the
        # shares' bounds cost time: never slower than the baseline
        best_helper = baseline
    helper_ms = helper_step_times(counts, best_helper, costs).sum(axis=0)
    return SyncAssignment(
        helper=best_helper, helper_ms=helper_ms, greedy_ms=greedy_ms, baseline_ms=baseline_ms,
        out_of_share=out_of_share(counts, best_helper, h, share_tolerance),
    )


def _local_search(
    costs: StepCosts,
    helper: np.ndarray,
    fits: Callable[[np.ndarray], bool],
    score: Callable[[np.ndarray], float],
    max_passes: int,
) -> tuple[np.ndarray, float]:
    """Move one client or swap two while ``score`` (the predicted round) gets lower."""
    k, h = costs.num_clients, costs.num_helpers
    current = score(helper)
    for _ in range(max_passes):
        improved = False
        for c in range(k):  # move one client
            for x in range(h):
                if x == helper[c]:
                    continue
                trial = helper.copy()
                trial[c] = x
                if fits(trial):
                    ms = score(trial)
                    if ms < current - 1e-9:
                        helper, current, improved = trial, ms, True
        for a in range(k):  # swap two clients of different helpers
            for b in range(a + 1, k):
                if helper[a] == helper[b]:
                    continue
                trial = helper.copy()
                trial[a], trial[b] = helper[b], helper[a]
                if fits(trial):
                    ms = score(trial)
                    if ms < current - 1e-9:
                        helper, current, improved = trial, ms, True
        if not improved:
            break
    return helper, current
