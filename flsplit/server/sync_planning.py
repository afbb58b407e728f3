"""The costs the step planner balances, from the round planner's node profiles and the
last round's measurements (global sampling with a planner).

:func:`step_costs` turns what the server knows into the per-sample and per-step costs of
:class:`~flsplit.plan.sampling.helper_assignment.StepCosts`: before a node is measured,
its profile (the server's part costs times its reported compute factor, as the one-hop
planner starts from); afterwards what the last round measured: each client's own time
per sample and each helper's body time per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flsplit.plan.sampling.helper_assignment import StepCosts
from flsplit.server.node_profiles import NodeProfiles, transfer_ms

__all__ = ["step_costs"]

_MIB = 2.0**20


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

    Returns
    -------
    StepCosts
    """
    client_ms = client_ms or {}
    body_ms = body_ms or {}
    last_helper = last_helper or {}
    costs = profiles.costs
    per_sample_bytes = 2.0 * (costs.cut1_bytes + costs.cut2_bytes) / batch_size
    k, h = len(clients), len(helpers)
    transfer = np.zeros((k, h))
    fixed = np.zeros((k, h))
    for i, c in enumerate(clients):
        for j, x in enumerate(helpers):
            rate, latency = profiles.link(c, x)
            # four messages a step: activations up and down, gradients up and down
            transfer[i, j] = transfer_ms(per_sample_bytes, rate, 0.0)
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
    )
