"""The synchronous-step schedule of a round under global sampling.

With ``sampler`` ``uniform`` or ``dirichlet`` a round runs as synchronous steps
(:mod:`flsplit.runtime.sync_helper`). The server draws the round's ``(steps, clients)``
counts from the clients' example counts (and per-sample costs from their compute
factors), sends each client its column and where its draws continue, and each helper the
columns of its clients in the order it concatenates them.
"""

from __future__ import annotations

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
    costs = [nodes[c].compute_factor for c in clients]
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
