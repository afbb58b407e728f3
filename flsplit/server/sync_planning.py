"""The costs the step planner balances, from the round planner's node profiles and the
last rounds' measurements (global sampling with a planner).

:func:`step_costs` turns what the server knows into the per-sample and per-step costs of
:class:`~flsplit.plan.sampling.helper_assignment.StepCosts`: before a node is measured,
its profile (the server's part costs times its reported compute factor, as the one-hop
planner starts from); afterwards what the last rounds measured: each client's own time
per sample, and each helper's fixed time per step, per participant and per sample,
fitted to its measured step times (:func:`fit_helper_steps`, smoothed over rounds like
the one-hop planner's stage times).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from flsplit.plan.sampling.helper_assignment import StepCosts, helper_step_times
from flsplit.server.node_profiles import NodeProfiles, transfer_ms

__all__ = [
    "MIN_FIT_STEPS",
    "MIN_PARTICIPANT_SPREAD",
    "HelperStepFit",
    "fit_helper_steps",
    "fit_round",
    "helper_step_durations",
    "measured_steps",
    "step_costs",
]

_MIB = 2.0**20
#: fewest measured steps a helper's fit is made from
MIN_FIT_STEPS = 4
#: least standard deviation of a helper's participants per step for a fixed step cost
#: to be fitted apart from the per-participant cost
MIN_PARTICIPANT_SPREAD = 0.5


class _Span(Protocol):
    client: str
    kind: str
    end: float


@dataclass(frozen=True)
class HelperStepFit:
    """A helper's measured costs in synchronous steps (milliseconds).

    A step of the helper with ``m`` participating clients and ``n`` samples takes
    ``step_ms + participant_ms * m + sample_ms * n + wait_scale * w``, with ``w`` the
    predicted wait for its slowest client's own parts and link.

    Attributes
    ----------
    step_ms, participant_ms, sample_ms : float
        Fixed time per step, per participant, per sample (all >= 0).
    steps : int
        Measured steps the fit is made from.
    wait_scale : float
        Measured over predicted wait for the slowest client (>= 0).
    """

    step_ms: float
    participant_ms: float
    sample_ms: float
    steps: int
    wait_scale: float = 1.0

    def blend(self, old: HelperStepFit | None, smoothing: float) -> HelperStepFit:
        """This fit smoothed with the last one: ``smoothing * new + (1 - smoothing) * old``."""
        if old is None:
            return self
        mix = [
            smoothing * new + (1.0 - smoothing) * prev
            for new, prev in zip(
                (self.step_ms, self.participant_ms, self.sample_ms, self.wait_scale),
                (old.step_ms, old.participant_ms, old.sample_ms, old.wait_scale),
                strict=True,
            )
        ]
        return HelperStepFit(*mix[:3], steps=self.steps, wait_scale=mix[3])


def helper_step_durations(spans: Iterable[_Span]) -> dict[int, float]:
    """Each synchronous step's time at a helper, from its task timeline.

    A step ends when the helper has run its body backward (the ``bwd`` task of client
    ``step<s>``); its time runs from the end of the helper's previous step, so it holds
    the clients' sync, head, upload, the body forward, the clients' tails and the body
    backward. The helper's first step has no predecessor and is left out (it includes
    the clients' start-up).

    Parameters
    ----------
    spans : iterable
        The helper's tasks (:class:`~flsplit.protocol.TaskSpan`: ``client``, ``kind``,
        ``end`` in seconds).

    Returns
    -------
    dict
        Step index -> milliseconds.
    """
    ends: dict[int, float] = {}
    for span in spans:
        name = str(span.client)
        if span.kind == "bwd" and name.startswith("step") and name[4:].isdigit():
            ends[int(name[4:])] = float(span.end)
    steps = sorted(ends)
    return {s: 1000.0 * (ends[s] - ends[p]) for p, s in itertools.pairwise(steps)}


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, for a few columns: the best
    unconstrained fit over every subset of the columns whose coefficients are all
    >= 0 (the others 0)."""
    best, best_err = np.zeros(x.shape[1]), float(np.sum(y**2))
    for size in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), size):
            coef, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(coef < 0):
                continue
            err = float(np.sum((x[:, cols] @ coef - y) ** 2))
            if err < best_err - 1e-12:
                full = np.zeros(x.shape[1])
                full[list(cols)] = coef
                best, best_err = full, err
    return best


def fit_helper_steps(
    durations_ms: Sequence[float],
    participants: Sequence[float],
    samples: Sequence[float],
    clients_ms: Sequence[float] | None = None,
    participant_ms: float | None = None,
) -> HelperStepFit | None:
    """Fit a helper's fixed, per-participant and per-sample step costs.

    Non-negative least squares of ``durations_ms`` on ``step_ms + participant_ms *
    participants + sample_ms * samples + wait_scale * clients_ms``: the wait for the
    slowest client is predicted from the clients' own times per sample, which hold
    their fixed costs per step spread over their samples, so its scale is measured
    too (a step's time is the helper's own work plus that wait). When the number
    of participants hardly varies (standard deviation below
    :data:`MIN_PARTICIPANT_SPREAD`) a fixed cost per step cannot be told from one per
    participant: the per-participant cost is then ``participant_ms`` if given (another
    helper's, see :func:`fit_round`), else all of it is counted per participant
    (``step_ms = 0``), so that piling clients on a helper is not predicted to be free.

    Parameters
    ----------
    durations_ms : sequence of float
        Measured time of each of the helper's steps (:func:`helper_step_durations`).
    participants, samples : sequence of float
        Its participating clients and samples in each of those steps.
    clients_ms : sequence of float, optional
        The predicted wait for the step's slowest client (its own parts and link);
        default 0 (no wait: ``wait_scale`` is 1).
    participant_ms : float, optional
        The per-participant cost to take when the participants hardly vary.

    Returns
    -------
    HelperStepFit or None
        ``None`` with fewer than :data:`MIN_FIT_STEPS` steps.
    """
    y = np.asarray(durations_ms, dtype=np.float64)
    m = np.asarray(participants, dtype=np.float64)
    n = np.asarray(samples, dtype=np.float64)
    wait = np.zeros_like(y) if clients_ms is None else np.asarray(clients_ms, dtype=np.float64)
    if not y.shape == m.shape == n.shape == wait.shape or y.ndim != 1:
        raise ValueError(
            f"durations {y.shape}, participants {m.shape}, samples {n.shape} and "
            f"clients_ms {wait.shape} must be equally long vectors"
        )
    keep = np.isfinite(y) & np.isfinite(wait) & (m > 0)
    if keep.sum() < MIN_FIT_STEPS:
        return None
    columns = [np.ones(int(keep.sum())), m[keep], n[keep], wait[keep]]
    used = [0, 1, 2, 3]
    coef = np.zeros(4)
    coef[3] = 1.0  # no wait measured: keep the prediction as it is
    target = y[keep]
    if np.std(m[keep]) < MIN_PARTICIPANT_SPREAD:
        if participant_ms is None:
            used.remove(0)
        else:
            used.remove(1)
            coef[1] = max(float(participant_ms), 0.0)
            target = target - coef[1] * m[keep]
    if not np.any(wait[keep] > 0):
        used.remove(3)
    coef[used] = _nnls(np.column_stack([columns[i] for i in used]), target)
    return HelperStepFit(*(float(c) for c in coef[:3]), steps=int(keep.sum()),
                         wait_scale=float(coef[3]))


def measured_steps(
    counts: np.ndarray,
    helper: np.ndarray,
    costs: StepCosts,
    durations: Mapping[int, Mapping[int, float]],
) -> dict[int, np.ndarray]:
    """What a round's measured steps are fitted to, per helper.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` the round's schedule.
    helper : numpy.ndarray
        ``(clients,)`` the helper index each client had.
    costs : StepCosts
        The round's clients' own costs and links (their measured times this round);
        its helper costs are ignored.
    durations : Mapping
        Helper index -> step -> measured milliseconds (:func:`helper_step_durations`).

    Returns
    -------
    dict
        Helper index -> ``(measured steps, 5)`` rows of step index, measured ms,
        participants, samples and the predicted wait for the slowest client (ms).
    """
    counts = np.asarray(counts, dtype=np.float64)
    helper = np.asarray(helper, dtype=np.int64)
    h = costs.num_helpers
    clients_only = StepCosts(
        costs.client_ms, np.zeros(h), costs.transfer_ms, costs.fixed_ms,
        costs.memory_mib, costs.capacity_mib,
    )
    wait = helper_step_times(counts, helper, clients_only)
    rows: dict[int, np.ndarray] = {}
    for x, measured in durations.items():
        steps = [s for s in sorted(measured) if 0 <= s < counts.shape[0]]
        mine = counts[:, helper == x]
        rows[x] = np.array(
            [
                [s, measured[s], (mine[s] > 0).sum(), mine[s].sum(), wait[s, x]]
                for s in steps
            ],
            dtype=np.float64,
        ).reshape(-1, 5)
    return rows


def fit_round(
    counts: np.ndarray,
    helper: np.ndarray,
    costs: StepCosts,
    durations: Mapping[int, Mapping[int, float]],
) -> dict[int, HelperStepFit]:
    """Fit every measured helper's step costs from one round (the parameters are those
    of :func:`measured_steps`).

    A helper whose participants per step hardly vary (one client, say) gets the median
    per-participant cost of the helpers where it could be fitted, so that a helper with
    few clients is not judged to pay all of its step time per client.

    Returns
    -------
    dict
        Helper index -> its fit (helpers with too few measured steps are left out).
    """
    rows = measured_steps(counts, helper, costs, durations)
    spread = {x: r[:, 2].std() >= MIN_PARTICIPANT_SPREAD for x, r in rows.items() if len(r)}
    fits: dict[int, HelperStepFit] = {}
    for x, r in rows.items():
        if spread.get(x):
            fit = fit_helper_steps(r[:, 1], r[:, 2], r[:, 3], r[:, 4])
            if fit is not None:
                fits[x] = fit
    pooled = [f.participant_ms for f in fits.values()]
    shared = float(np.median(pooled)) if pooled else None
    for x, r in rows.items():
        if not spread.get(x):
            fit = fit_helper_steps(r[:, 1], r[:, 2], r[:, 3], r[:, 4], participant_ms=shared)
            if fit is not None:
                fits[x] = fit
    return fits


def step_costs(
    profiles: NodeProfiles,
    clients: Sequence[int],
    helpers: Sequence[int],
    counts: np.ndarray,
    batch_size: int,
    *,
    client_ms: Mapping[int, float] | None = None,
    body_ms: Mapping[int, float] | None = None,
    last_helper: Mapping[int, int] | None = None,
    helper_fit: Mapping[int, HelperStepFit] | None = None,
) -> StepCosts:
    """Costs of ``clients`` at ``helpers`` for one round's schedule ``counts``.

    Parameters
    ----------
    profiles : NodeProfiles
        Node profiles (part costs of one batch of ``batch_size``, links, memory).
    clients, helpers : sequence of int
        Node ids; ``counts``' columns follow ``clients``.
    counts : numpy.ndarray
        ``(steps, clients)`` the round's schedule (for the activations' memory).
    batch_size : int
        Samples of the batch the profiles' costs are for.
    client_ms : Mapping, optional
        Client -> its measured own time per sample in the last round (it includes its
        link's transfers to ``last_helper[client]``, which are taken out).
    body_ms : Mapping, optional
        Helper -> its measured body time per sample in the last round.
    last_helper : Mapping, optional
        Client -> the helper it had in the last round.
    helper_fit : Mapping, optional
        Helper -> its fitted step costs (:func:`fit_helper_steps`); its per-sample cost
        replaces ``body_ms``. A helper without a fit gets the median fixed and
        per-participant costs and wait scale of the fitted ones (0, 0 and 1 when none
        is fitted).

    Returns
    -------
    StepCosts
    """
    client_ms = client_ms or {}
    body_ms = body_ms or {}
    last_helper = last_helper or {}
    helper_fit = helper_fit or {}
    costs = profiles.costs
    per_sample_bytes = 2.0 * (costs.cut1_bytes + costs.cut2_bytes) / batch_size
    k, h = len(clients), len(helpers)
    transfer = np.zeros((k, h))
    fixed = np.zeros((k, h))
    for i, c in enumerate(clients):
        # what the links carry: each direction's codec's bytes, the client's (a helper
        # holds them decoded)
        ratio = sum(codec.byte_ratio for codec in profiles.codecs_of(c)) / 2
        for j, x in enumerate(helpers):
            rate, latency = profiles.link(c, x)
            # four messages a step: activations up and down, gradients up and down
            transfer[i, j] = transfer_ms(per_sample_bytes * ratio, rate, 0.0)
            fixed[i, j] = 4.0 * latency
    own = np.zeros(k)
    for i, c in enumerate(clients):
        if c in client_ms:
            j = helpers.index(last_helper[c]) if last_helper.get(c) in helpers else None
            link = transfer[i, j] if j is not None else 0.0
            own[i] = max(float(client_ms[c]) - link, 0.0)
        else:
            p = profiles.clients[c]
            own[i] = (p.head_fwd_ms + p.tail_ms + p.head_bwd_ms + p.load_ms) / batch_size
    body = np.array(
        [
            float(body_ms[x])
            if x in body_ms
            else (profiles.helpers[x].body_fwd_ms + profiles.helpers[x].body_bwd_ms) / batch_size
            for x in helpers
        ]
    )
    fitted = [helper_fit[x] for x in helpers if x in helper_fit]
    # an unmeasured helper (new) is assumed to handle steps and clients like the others
    default_step = float(np.median([f.step_ms for f in fitted])) if fitted else 0.0
    default_part = float(np.median([f.participant_ms for f in fitted])) if fitted else 0.0
    step = np.array([helper_fit[x].step_ms if x in helper_fit else default_step for x in helpers])
    part = np.array(
        [helper_fit[x].participant_ms if x in helper_fit else default_part for x in helpers]
    )
    default_wait = float(np.median([f.wait_scale for f in fitted])) if fitted else 1.0
    wait = np.array(
        [helper_fit[x].wait_scale if x in helper_fit else default_wait for x in helpers]
    )
    for j, x in enumerate(helpers):
        if x in helper_fit:
            body[j] = helper_fit[x].sample_ms
    # A helper holds one shared body and, per client, its largest step's activations
    # and gradients at both cuts.
    peak = np.asarray(counts, dtype=np.float64).max(axis=0) if len(counts) else np.zeros(k)
    memory = peak * per_sample_bytes / _MIB
    capacity = np.array(
        [
            max(profiles.helpers[x].memory_mib - costs.body_memory_mib, 0.0)
            if np.isfinite(profiles.helpers[x].memory_mib)
            else np.inf
            for x in helpers
        ]
    )
    return StepCosts(
        client_ms=own,
        body_ms=body,
        transfer_ms=transfer,
        fixed_ms=fixed,
        memory_mib=memory,
        capacity_mib=capacity,
        step_ms=step,
        participant_ms=part,
        wait_scale=wait,
    )
