"""The planner benchmark's scenario families with free cut points.

:func:`family_problem` draws exactly the clients, helpers and link rates of
:func:`flsplit.plan.generator.generate_instance` (same seed, same random stream) but
keeps every candidate cut pair, so ``problem.instance(published pair for all)`` is the
planner benchmark's instance and other cut choices are the same round with different
cuts. Low heterogeneity: each client is a real device (its profile column); high
heterogeneity: each client sits, per part time, at a uniformly drawn position between the
fastest and the slowest client device (:func:`flsplit.plan.cuts.problem.interpolated_client`).
Client memory is the device preset's (4 GiB for the devices used); helper capacity is
the generator's: ``ceil(memory_slack * K / H)`` bodies of the published cut.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flsplit.plan.cuts.problem import CutProblem, build_problem, candidate_pairs
from flsplit.plan.cuts.profiles import (
    NodeCosts,
    interpolated_client,
    layer_profile,
    node_costs,
)
from flsplit.plan.generator import (
    CLIENT_DEVICES,
    CUTS,
    HELPER_DEVICES,
    body_memory_mib,
    draw_link_rates,
)


def _has_client_data(profile: dict[str, Any], device: str, cuts: tuple[int, int]) -> bool:
    """The generator's rule: positive forward times on every head and tail layer."""
    forward = np.asarray(profile["devices"][device]["forward_ms"], dtype=float)
    return bool((forward[: cuts[0]] > 0).all() and (forward[cuts[1] :] > 0).all())


def family_problem(
    model: str,
    num_clients: int,
    num_helpers: int,
    heterogeneity: str,
    seed: int,
    profile: dict[str, Any],
    memory_slack: float = 1.5,
    pairs: np.ndarray | None = None,
) -> CutProblem:
    """Cut problem of one benchmark instance (see the module docstring).

    Parameters
    ----------
    model
        ``"resnet101"`` or ``"vgg19"`` (published cuts in :data:`CUTS`).
    num_clients, num_helpers, heterogeneity, seed, memory_slack
        As in :func:`flsplit.plan.generator.generate_instance`.
    profile
        The loaded profile JSON of ``model``.
    pairs
        Candidate cut pairs (default: all with a non-empty head, body and tail; the
        published pair is always added).
    """
    if heterogeneity not in ("low", "high"):
        raise ValueError(f"heterogeneity: expected 'low' or 'high', got {heterogeneity!r}")
    if model not in CUTS:
        raise ValueError(f"model: unknown {model!r}, expected one of {sorted(CUTS)}")
    layers = layer_profile(profile)
    published = CUTS[model]
    rng = np.random.default_rng(seed)
    ok = [d for d in CLIENT_DEVICES if d in profile["devices"]
          and _has_client_data(profile, d, published)]
    costs = {d: node_costs(layers, d) for d in ok}
    helper_types = [str(rng.choice(HELPER_DEVICES)) for _ in range(num_helpers)]
    clients: list[NodeCosts] = []
    kinds: list[str] = []
    for k in range(num_clients):
        if heterogeneity == "low":
            device = str(rng.choice(ok))
            clients.append(costs[device])
            kinds.append(device)
        else:
            position = [rng.uniform(0.0, 1.0) for _ in range(4)]
            memory = float(min(c.memory_mib for c in costs.values()))
            clients.append(interpolated_client(list(costs.values()), position, memory,
                                               f"drawn{k}"))
            kinds.append("drawn")
    rates = draw_link_rates(rng, (num_clients, num_helpers))
    capacity = body_memory_mib(profile, published) * math.ceil(
        memory_slack * num_clients / num_helpers)
    helpers = [node_costs(layers, e, memory_mib=capacity) for e in helper_types]
    if pairs is None:
        pairs = candidate_pairs(layers.num_layers)
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    if not ((pairs[:, 0] == published[0]) & (pairs[:, 1] == published[1])).any():
        pairs = np.vstack([pairs, [published]])
    return build_problem(
        layers, clients, helpers, rates, pairs,
        name=f"{model}-{heterogeneity}-K{num_clients}-H{num_helpers}-s{seed}",
        meta={"generator": "flsplit.plan.cuts.family", "model": model,
              "heterogeneity": heterogeneity, "seed": seed, "client_devices": kinds,
              "helper_devices": helper_types, "published_cuts": list(published)},
    )
