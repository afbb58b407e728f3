"""The synchronous-step schedule of a round under global sampling.

With ``sampler`` ``uniform`` or ``dirichlet`` a round runs as synchronous steps
(:mod:`flsplit.runtime.sync_helper`). The server draws the round's ``(steps, clients)``
counts from the clients' example counts (and, for the Dirichlet sampler's straggler
weight, per-sample costs: each client's measured time per sample in the last round, or
its reported compute factor before it has been measured, :func:`sample_costs`), sends
each client its column and where its draws continue, and each helper the columns of its
clients in the order it concatenates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.supercore import log

from flsplit.config import SyncSettings
from flsplit.plan.sampling.samplers import round_schedule, sampler_from_settings
from strategies.discovery import NodeInfo


@dataclass
class SyncSchedule:
    """One round's schedule and what each node is told of it.

    Attributes
    ----------
    counts : numpy.ndarray
        ``(steps, clients)`` samples per step, one column per client.
    column : dict
        Client -> its column in ``counts``.
    offset : dict
        Client -> samples it drew in earlier rounds (where its draws continue).
    client_parts : str
        The run's ``client-parts`` setting, passed on to every node.
    """

    counts: np.ndarray
    column: dict[int, int]
    offset: dict[int, int]
    client_parts: str

    def columns(self, clients: Sequence[int]) -> np.ndarray:
        """The ``clients``' columns of the schedule, in that order."""
        return self.counts[:, [self.column[c] for c in clients]]


def draw_schedule(
    sampling: SyncSettings,
    nodes: Mapping[int, NodeInfo],
    server_round: int,
    clients: Sequence[int],
    measured: Mapping[int, float] | None = None,
) -> SyncSchedule | None:
    """The round's schedule, or ``None`` without global sampling (or without clients).

    Parameters
    ----------
    sampling : SyncSettings
        The run config's global-sampling settings (:func:`flsplit.config.sync_settings`).
    nodes : Mapping
        What the clients reported at discovery (example counts, compute factors).
    server_round : int
        The round (draws depend on it).
    clients : sequence of int
        The round's clients; their columns follow this order.
    measured : Mapping, optional
        Client -> its measured time per sample (ms) in the last round; with
        ``sampling.speeds == "measured"`` these are the Dirichlet sampler's costs.

    Raises
    ------
    RuntimeError
        If a client reported no training examples.
    """
    if not sampling.sync or not clients:
        return None
    sizes = [nodes[c].examples for c in clients]
    empty = [c for c, n in zip(clients, sizes, strict=True) if n < 1]
    if empty:
        raise RuntimeError(
            f"clients {empty} reported no training examples; global sampling draws "
            "from every client's data"
        )
    reported = [nodes[c].compute_factor for c in clients]
    costs = reported
    if sampling.speeds == "measured" and measured:
        costs = sample_costs(clients, reported, measured)
    sampler = sampler_from_settings(sampling, sizes, costs)
    counts, offsets = round_schedule(sampler, server_round, sampling.steps, sampling.local_epochs)
    log(
        INFO,
        "round %d: %s sampling, %d synchronous steps, global batch %d (%.1f clients "
        "per step on average)",
        server_round,
        sampler.name,
        counts.shape[0],
        int(counts.sum(axis=1).max()),
        float((counts > 0).sum(axis=1).mean()),
    )
    return SyncSchedule(
        counts=counts,
        column={c: i for i, c in enumerate(clients)},
        offset={c: int(offsets[i]) for i, c in enumerate(clients)},
        client_parts=sampling.client_parts,
    )


def sample_costs(
    clients: Sequence[int], reported: Sequence[float], measured: Mapping[int, float]
) -> list[float]:
    """Per-sample costs of ``clients``: measured where known, else from reported factors.

    A client without a measurement (new this round, or failed in the last) gets its
    reported compute factor times the median ratio of measured time to reported factor
    of the measured clients, so both kinds of cost are on one scale.

    Parameters
    ----------
    clients : sequence of int
        The round's clients.
    reported : sequence of float
        Their reported compute factors, in that order.
    measured : Mapping
        Client -> measured ms per sample (positive).

    Returns
    -------
    list of float
        One positive cost per client.
    """
    known = {c: float(v) for c, v in measured.items() if math.isfinite(v) and v > 0}
    ratios = [known[c] / f for c, f in zip(clients, reported, strict=True) if c in known and f > 0]
    if not ratios:
        return list(reported)
    scale = float(np.median(ratios))
    return [known.get(c, f * scale) for c, f in zip(clients, reported, strict=True)]
