"""The synchronous-step schedule of a round under global sampling.

With ``sampler`` ``uniform`` or ``dirichlet`` a round runs as synchronous steps
(:mod:`flsplit.runtime.syncplane`). The server draws the round's ``(steps, clients)``
counts from the clients' example counts (and per-sample costs from their compute
factors), sends each client its column and where its draws continue, and each helper the
columns of its clients in the order it concatenates them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from flwr.supercore import log

from flsplit.plan.sampling.samplers import pack_schedule, round_schedule, sampler_from_config
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

    def client_fields(self, client: int) -> dict[str, Any]:
        """Config entries of ``client``'s ``train.split`` message: its column."""
        return {
            **pack_schedule(self.counts[:, [self.column[client]]]),
            "sample-offset": self.offset[client],
            "client-parts": self.client_parts,
        }

    def helper_fields(self, clients: Sequence[int]) -> dict[str, Any]:
        """Config entries of a helper's message: its ``clients``' columns, in that order."""
        return {
            **pack_schedule(self.counts[:, [self.column[c] for c in clients]]),
            "client-parts": self.client_parts,
        }


def draw_schedule(
    sampling: Mapping[str, Any],
    nodes: Mapping[int, NodeInfo],
    server_round: int,
    clients: Sequence[int],
) -> SyncSchedule | None:
    """The round's schedule, or ``None`` without global sampling (or without clients).

    Parameters
    ----------
    sampling : Mapping
        Checked global-sampling settings
        (:func:`flsplit.plan.sampling.samplers.check_sync_config`).
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
    if not sampling["sync"] or not clients:
        return None
    sizes = [nodes[c].examples for c in clients]
    empty = [c for c, n in zip(clients, sizes, strict=True) if n < 1]
    if empty:
        raise RuntimeError(
            f"clients {empty} reported no training examples; global sampling draws "
            "from every client's data"
        )
    costs = [float(nodes[c].info.get("compute-factor", 1.0)) for c in clients]
    sampler = sampler_from_config(sampling, sizes, costs)
    counts, offsets = round_schedule(
        sampler, server_round, int(sampling["sync-steps"]), int(sampling["local-epochs"])
    )
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
        client_parts=sampling["client-parts"],
    )
