"""Instance builder: layer profile + node profiles + link rates + cut pairs -> instances.

A model with ``L`` profiled layers is cut at a *cut pair* ``(c1, c2)`` with
``1 <= c1 < c2 <= L``: the client keeps the head ``layers[:c1]`` and the tail
``layers[c2:]``, its helper runs the body ``layers[c1:c2]``. For client ``k`` with link
rate ``R`` Mbit/s to helper ``h`` (``tx(x) = x KiB * 8.192 / R`` ms)::

    head_fwd_up   = F_head(k) + tx(a[c1 - 1])
    body_fwd      = F_body(h)
    tail_fwd_bwd  = tx(a[c2 - 1]) + F_tail(k) + B_tail(k) + tx(a[c2 - 1])
    body_bwd      = B_body(h)
    down_head_bwd = tx(a[c1 - 1]) + B_head(k)

where ``a[i]`` is ``activation_kib`` of layer ``i`` (the gradient crossing a cut has the
same size), ``F`` sums forward times and ``B`` backward plus update times. Layer and node
profiles (sizes, memory, per-device times) are in :mod:`flsplit.plan.cuts.profiles`.

The central object is :class:`CutProblem`: every stage time for every client, helper
and candidate cut pair (``K x H x P`` arrays), the body memory per pair, each client's
own memory need per pair, and which pairs each client may take. ``problem.instance(..)``
turns a choice of pairs into a planner :class:`~flsplit.plan.instance.Instance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flsplit.plan.cuts.profiles import (
    LayerProfile,
    NodeCosts,
    interpolated_client,
    layer_profile,
    load_layer_profile,
    node_costs,
    resolve_device,
)
from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.instance import STAGE_NAMES, Instance, InstanceError

# The profile names stay importable from here, beside the problem they feed.
__all__ = [
    "CutPair",
    "CutProblem",
    "LayerProfile",
    "NodeCosts",
    "build_instance",
    "build_problem",
    "candidate_pairs",
    "interpolated_client",
    "layer_profile",
    "load_layer_profile",
    "node_costs",
    "resolve_device",
]

CutPair = tuple[int, int]

def candidate_pairs(num_layers: int, max_c2: int | None = None) -> np.ndarray:
    """All cut pairs ``1 <= c1 < c2 <= max_c2`` (default ``L - 1``: a non-empty tail)."""
    top = num_layers - 1 if max_c2 is None else max_c2
    pairs = [(c1, c2) for c1 in range(1, top) for c2 in range(c1 + 1, top + 1)]
    return np.asarray(pairs, dtype=int).reshape(-1, 2)


@dataclass
class CutProblem:
    """Stage times for every client, helper and candidate cut pair.

    Attributes
    ----------
    client_ids, helper_ids
        Ids of the ``K`` clients and ``H`` helpers.
    pairs
        ``P x 2`` candidate cut pairs.
    stages
        Stage name -> ``K x H x P`` times (ms).
    body_memory
        Length-``P`` memory (MiB) of each pair's body on a helper.
    client_need
        Length-``P`` memory (MiB) a client needs for that pair's head and tail.
    allowed
        ``K x P``: client ``k`` can hold pair ``p`` (memory and profile data).
    helper_memory
        Length-``H`` helper capacities (MiB).
    rates_mbps
        ``K x H`` link rates the transfer times were computed with (``None`` when the
        stage times were given directly).
    cut_kib
        ``P x 2`` activation size (KiB) crossing each pair's first and second cut.
    link_mbps
        Length-``H`` capacity (Mbit/s) of each helper's own link, shared by the clients
        it serves (``inf``: not shared); see :mod:`flsplit.plan.cuts.links`.
    """

    client_ids: list[str]
    helper_ids: list[str]
    pairs: np.ndarray
    stages: dict[str, np.ndarray]
    body_memory: np.ndarray
    client_need: np.ndarray
    allowed: np.ndarray
    helper_memory: np.ndarray
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    rates_mbps: np.ndarray | None = None
    cut_kib: np.ndarray | None = None
    link_mbps: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, H, P)``."""
        return self.stages["body_fwd"].shape

    def pair_index(self, pair: Sequence[int]) -> int:
        """Index of cut pair ``pair`` in :attr:`pairs` (``ValueError`` if absent)."""
        hits = np.flatnonzero((self.pairs[:, 0] == pair[0]) & (self.pairs[:, 1] == pair[1]))
        if not len(hits):
            raise ValueError(f"cut pair {tuple(pair)} is not a candidate of this problem")
        return int(hits[0])

    def usable(self) -> np.ndarray:
        """``K x H x P``: pair allowed for the client and its body fits on the helper."""
        fits = self.body_memory[None, :] <= self.helper_memory[:, None] + 1e-9
        return self.allowed[:, None, :] & fits[None, :, :]

    def restricted(self, pairs: np.ndarray) -> CutProblem:
        """The same problem with only the candidate pairs of index ``pairs`` (in that
        order)."""
        pairs = np.asarray(pairs, dtype=int)
        return replace(
            self, pairs=self.pairs[pairs],
            stages={s: times[:, :, pairs] for s, times in self.stages.items()},
            body_memory=self.body_memory[pairs], client_need=self.client_need[pairs],
            allowed=self.allowed[:, pairs],
            cut_kib=None if self.cut_kib is None else self.cut_kib[pairs],
        )

    def with_rates(self, rates_mbps: np.ndarray) -> CutProblem:
        """The same problem with every transfer time recomputed for ``rates_mbps``
        (``K x H``, Mbit/s): the compute parts of the stages are kept."""
        if self.rates_mbps is None or self.cut_kib is None:
            raise ValueError("rates_mbps: this problem was not built from link rates")
        rates = np.asarray(rates_mbps, dtype=float)
        if rates.shape != self.rates_mbps.shape or not (rates > 0).all():
            raise ValueError(f"rates_mbps: expected positive {list(self.rates_mbps.shape)} "
                             f"rates, got shape {list(rates.shape)}")
        change = (1.0 / rates - 1.0 / self.rates_mbps)[..., None]
        first = (self.cut_kib[:, 0] * KIB_TO_MS_AT_1MBIT)[None, None, :] * change
        second = (self.cut_kib[:, 1] * KIB_TO_MS_AT_1MBIT)[None, None, :] * change
        stages = dict(self.stages)
        stages["head_fwd_up"] = self.stages["head_fwd_up"] + first
        stages["tail_fwd_bwd"] = self.stages["tail_fwd_bwd"] + 2.0 * second
        stages["down_head_bwd"] = self.stages["down_head_bwd"] + first
        return replace(self, stages=stages, rates_mbps=rates.copy())

    def instance(self, choice: np.ndarray, name: str | None = None) -> Instance:
        """The planner instance for a choice of pairs.

        Parameters
        ----------
        choice
            Length-``K`` pair index per client, or ``K x H`` pair index per client and
            helper (then a client's body memory is the largest over its helpers).

        Raises
        ------
        InstanceError
            ``cuts[k]`` if a client cannot hold its pair; memory errors as in
            :class:`~flsplit.plan.instance.Instance`.
        """
        num_clients, num_helpers, _ = self.shape
        choice = np.asarray(choice, dtype=int)
        per_client = choice.ndim == 1
        grid = np.repeat(choice[:, None], num_helpers, axis=1) if per_client else choice
        if grid.shape != (num_clients, num_helpers):
            raise InstanceError("cuts", f"expected {num_clients} or {num_clients}x"
                                f"{num_helpers} pair indices, got shape {list(choice.shape)}")
        rows, cols = np.indices(grid.shape)
        bad = ~self.allowed[rows, grid]
        if bad.any():
            k, h = (int(i) for i in np.argwhere(bad)[0])
            c1, c2 = self.pairs[grid[k, h]]
            raise InstanceError(f"cuts[{k}]", f"client {self.client_ids[k]!r} cannot hold "
                                f"cut ({c1}, {c2}): needs {self.client_need[grid[k, h]]:g} "
                                "MiB or lacks profile data for its head/tail")
        stages = {s: self.stages[s][rows, cols, grid] for s in STAGE_NAMES}
        memory = self.body_memory[grid].max(axis=1)
        if per_client:
            cuts: dict[str, Any] = {c: [int(v) for v in self.pairs[p]]
                                    for c, p in zip(self.client_ids, choice, strict=True)}
        else:
            cuts = {c: {h: [int(v) for v in self.pairs[grid[k, j]]]
                        for j, h in enumerate(self.helper_ids)}
                    for k, c in enumerate(self.client_ids)}
        return Instance(
            client_ids=self.client_ids, helper_ids=self.helper_ids, body_memory=memory,
            helper_memory=self.helper_memory.copy(), name=name or self.name,
            meta={**self.meta, "cuts": cuts}, **stages,
        )


def build_problem(
    profile: LayerProfile,
    clients: Sequence[NodeCosts],
    helpers: Sequence[NodeCosts],
    rates_mbps: np.ndarray,
    pairs: np.ndarray | Sequence[CutPair] | None = None,
    client_ids: Sequence[str] | None = None,
    helper_ids: Sequence[str] | None = None,
    name: str = "",
    meta: dict[str, Any] | None = None,
    link_mbps: Sequence[float] | None = None,
) -> CutProblem:
    """Stage times of every client, helper and cut pair (see the module docstring).

    Parameters
    ----------
    profile
        Layer sizes.
    clients, helpers
        Node costs (their ``memory_mib`` is the client's / helper's capacity).
    rates_mbps
        ``K x H`` link rates in Mbit/s (positive).
    pairs
        Candidate cut pairs (default :func:`candidate_pairs`).
    client_ids, helper_ids
        Ids (default ``c0..`` / ``h0..``).
    link_mbps
        Length-``H`` capacity of each helper's shared link (``inf`` or default: none).
    """
    num_layers = profile.num_layers
    pairs = candidate_pairs(num_layers) if pairs is None else np.asarray(pairs, dtype=int)
    pairs = pairs.reshape(-1, 2)
    if not len(pairs):
        raise ValueError("pairs: no candidate cut pairs")
    bad = (pairs[:, 0] < 1) | (pairs[:, 0] >= pairs[:, 1]) | (pairs[:, 1] > num_layers)
    if bad.any():
        raise ValueError(f"pairs[{int(np.argmax(bad))}]: cut pair {tuple(pairs[bad][0])} "
                         f"is not 1 <= c1 < c2 <= {num_layers}")
    num_clients, num_helpers = len(clients), len(helpers)
    if not num_clients or not num_helpers:
        raise ValueError("clients/helpers: at least one of each is required")
    rates = np.asarray(rates_mbps, dtype=float)
    if rates.shape != (num_clients, num_helpers):
        raise ValueError(f"rates_mbps: shape {list(rates.shape)} does not match "
                         f"{num_clients} clients x {num_helpers} helpers")
    if not (np.isfinite(rates) & (rates > 0)).all():
        k, h = (int(i) for i in np.argwhere(~(np.isfinite(rates) & (rates > 0)))[0])
        raise ValueError(f"rates_mbps[{k}][{h}]: link rate must be positive, got "
                         f"{rates[k, h]!r}")
    c1, c2 = pairs[:, 0], pairs[:, 1]
    tx1 = (profile.activation_kib[c1 - 1] * KIB_TO_MS_AT_1MBIT)[None, None, :] / rates[..., None]
    tx2 = (profile.activation_kib[c2 - 1] * KIB_TO_MS_AT_1MBIT)[None, None, :] / rates[..., None]
    head_fwd = np.stack([c.head_fwd[c1] for c in clients])[:, None, :]
    head_bwd = np.stack([c.head_bwd[c1] for c in clients])[:, None, :]
    tail = np.stack([c.tail_fwd[c2] + c.tail_bwd[c2] for c in clients])[:, None, :]
    body = [h.body(c1, c2) for h in helpers]
    shape = (num_clients, num_helpers, len(pairs))
    stages = {
        "head_fwd_up": head_fwd + tx1,
        "body_fwd": np.broadcast_to(np.stack([b[0] for b in body])[None], shape).copy(),
        "tail_fwd_bwd": tx2 + tail + tx2,
        "body_bwd": np.broadcast_to(np.stack([b[1] for b in body])[None], shape).copy(),
        "down_head_bwd": tx1 + head_bwd,
    }
    memory = np.concatenate([[0.0], profile.memory_kib.cumsum()]) / 1024.0
    body_memory = memory[c2] - memory[c1]
    client_need = memory[c1] + memory[-1] - memory[c2]
    capacity = np.array([c.memory_mib for c in clients])
    allowed = client_need[None, :] <= capacity[:, None] + 1e-9
    allowed &= np.stack([c.head_ok[c1] & c.tail_ok[c2] for c in clients])
    return CutProblem(
        client_ids=list(client_ids or [f"c{k}" for k in range(num_clients)]),
        helper_ids=list(helper_ids or [f"h{j}" for j in range(num_helpers)]),
        pairs=pairs, stages=stages, body_memory=body_memory, client_need=client_need,
        allowed=allowed, helper_memory=np.array([h.memory_mib for h in helpers]),
        name=name, meta=dict(meta or {}), rates_mbps=rates.copy(),
        cut_kib=np.stack([profile.activation_kib[c1 - 1], profile.activation_kib[c2 - 1]],
                         axis=1),
        link_mbps=_links(link_mbps, num_helpers),
    )


def _links(link_mbps: Sequence[float] | None, num_helpers: int) -> np.ndarray:
    if link_mbps is None:
        return np.full(num_helpers, np.inf)
    links = np.asarray(link_mbps, dtype=float)
    if links.shape != (num_helpers,):
        raise ValueError(f"link_mbps: expected {num_helpers} values, got shape "
                         f"{list(links.shape)}")
    if not (links > 0).all():
        raise ValueError(f"link_mbps[{int(np.argmin(links > 0))}]: link capacity must be "
                         f"positive, got {links[int(np.argmin(links > 0))]!r}")
    return links


def build_instance(
    profile: LayerProfile,
    clients: Sequence[NodeCosts],
    helpers: Sequence[NodeCosts],
    rates_mbps: np.ndarray,
    cuts: Sequence[CutPair],
    client_ids: Sequence[str] | None = None,
    helper_ids: Sequence[str] | None = None,
    name: str = "",
    meta: dict[str, Any] | None = None,
) -> Instance:
    """The planner instance for one cut pair per client (``meta["cuts"]`` keeps them).

    Raises
    ------
    InstanceError
        ``cuts[k]`` when client ``k`` cannot hold its cut pair (memory or profile data).
    """
    if len(cuts) != len(clients):
        raise ValueError(f"cuts: expected one cut pair per client ({len(clients)}), "
                         f"got {len(cuts)}")
    unique = sorted({(int(a), int(b)) for a, b in cuts})
    problem = build_problem(profile, clients, helpers, rates_mbps, unique, client_ids,
                            helper_ids, name, meta)
    choice = np.array([unique.index((int(a), int(b))) for a, b in cuts])
    return problem.instance(choice)
