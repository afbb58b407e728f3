"""Plan every round from live measurements.

The server keeps a profile per node: compute times of the parts it runs, one batch,
smoothed exponentially over rounds. Until a node has been measured its times are the
server's own measurement of the parts scaled by the node's reported compute factor.
Links are modelled as ``latency + bits / rate`` per transfer, from the link table the
server was given (emulated links, or rates the operator knows).

Each round, :class:`RoundPlanner` turns the profiles into a planner
:class:`~flsplit.plan.Instance` for the sampled clients and live helpers, solves it with
the configured method, and predicts the whole round (several batches per client) with
:func:`~flsplit.plan.rounds.predict_round`. The plan's assignment and per-helper order
go out with the round's messages; the replies' measurements come back through
:meth:`RoundPlanner.observe_client` and :meth:`RoundPlanner.observe_helper`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from flsplit.plan import Instance, Plan, solve
from flsplit.plan.rounds import RoundPrediction, predict_round

LinkFn = Callable[[int, int], tuple[float, float]]  # (client, helper) -> (Mbit/s, latency ms)


@dataclass(frozen=True)
class PartCosts:
    """One batch through the parts, measured once on the server's machine.

    Times in ms; ``cut1_bytes`` and ``cut2_bytes`` are the activation sizes at the cuts
    (their gradients have the same size); ``body_memory_mib`` is what a helper needs to
    hold one client's body.
    """

    head_fwd_ms: float
    head_bwd_ms: float
    body_fwd_ms: float
    body_bwd_ms: float
    tail_ms: float
    cut1_bytes: int
    cut2_bytes: int
    body_memory_mib: float


@dataclass
class ClientProfile:
    """Compute times of a client's head and tail (ms per batch)."""

    head_fwd_ms: float
    head_bwd_ms: float
    tail_ms: float
    measured: bool = False
    start_offset_ms: float = 0.0


@dataclass
class HelperProfile:
    """Compute times of a helper's body tasks (ms per batch) and its memory."""

    body_fwd_ms: float
    body_bwd_ms: float
    memory_mib: float
    measured: bool = False


@dataclass
class RoundPlan:
    """The plan of one round and what it predicts."""

    instance: Instance
    plan: Plan
    prediction: RoundPrediction
    batches: dict[str, int]
    planning_seconds: float
    node_ids: dict[str, int] = field(default_factory=dict)

    def helper_of(self) -> dict[int, int]:
        """Client node id -> helper node id."""
        return {self.node_ids[c]: self.node_ids[h] for c, h in self.plan.assignment.items()}

    def order_of(self, helper: int) -> list[str]:
        """The helper's task priority list as sent to it (``"client:fwd"`` strings)."""
        name = f"h{helper}"
        return [f"{self.node_ids[c]}:{kind}" for c, kind in self.plan.order.get(name, [])]


def transfer_ms(nbytes: float, rate_mbps: float, latency_ms: float) -> float:
    """Time to move ``nbytes`` over a link."""
    seconds = nbytes * 8.0 / (rate_mbps * 1e6) if rate_mbps > 0 else 0.0
    return latency_ms + 1000.0 * seconds


class RoundPlanner:
    """Per-round planning from node profiles that measurements keep up to date.

    Parameters
    ----------
    costs : PartCosts
        The parts' costs on the server's machine.
    link : callable
        ``link(client, helper) -> (rate Mbit/s, latency ms)``; a rate of 0 means free.
    method : str
        Planner method (``auto``, ``greedy``, ``random-fcfs``, ...).
    time_limit : float
        Seconds the planner may use.
    seed : int
        Seed of randomized methods.
    smoothing : float
        Weight of a new measurement in the exponential average (1 = keep only the last).
    """

    def __init__(
        self,
        costs: PartCosts,
        link: LinkFn,
        method: str = "auto",
        time_limit: float = 2.0,
        seed: int = 0,
        smoothing: float = 0.6,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing={smoothing} must be in (0, 1]")
        self.costs = costs
        self.link = link
        self.method = method
        self.time_limit = time_limit
        self.seed = seed
        self.smoothing = smoothing
        self.clients: dict[int, ClientProfile] = {}
        self.helpers: dict[int, HelperProfile] = {}

    # -- profiles ---------------------------------------------------------------------

    def add_client(self, node: int, compute_factor: float = 1.0) -> None:
        """Register a client whose compute is ``compute_factor`` times the server's."""
        c = self.costs
        self.clients[node] = ClientProfile(
            c.head_fwd_ms * compute_factor,
            c.head_bwd_ms * compute_factor,
            c.tail_ms * compute_factor,
        )

    def add_helper(
        self, node: int, compute_factor: float = 1.0, memory_mib: float = float("inf")
    ) -> None:
        """Register a helper whose compute is ``compute_factor`` times the server's."""
        c = self.costs
        self.helpers[node] = HelperProfile(
            c.body_fwd_ms * compute_factor, c.body_bwd_ms * compute_factor, memory_mib
        )

    def drop(self, node: int) -> None:
        """Forget a node that failed or left; it is planned out from now on."""
        self.clients.pop(node, None)
        self.helpers.pop(node, None)

    def _blend(self, old: float, new: float, measured: bool) -> float:
        return new if not measured else self.smoothing * new + (1 - self.smoothing) * old

    def observe_client(
        self,
        node: int,
        helper: int,
        stage1_ms: float,
        stage3_ms: float,
        stage5_ms: float,
        start_offset_ms: float = 0.0,
    ) -> None:
        """Update a client's compute times from its measured stage means with ``helper``,
        and how long after the round's first client it started training."""
        profile = self.clients.get(node)
        if profile is None:
            return
        rate, latency = self.link(node, helper)
        up1 = transfer_ms(self.costs.cut1_bytes, rate, latency)
        up2 = transfer_ms(self.costs.cut2_bytes, rate, latency)
        head_fwd = max(stage1_ms - up1, 0.0)
        tail = max(stage3_ms - 2 * up2, 0.0)
        head_bwd = max(stage5_ms - up1, 0.0)
        seen = profile.measured
        profile.start_offset_ms = self._blend(profile.start_offset_ms, start_offset_ms, seen)
        profile.head_fwd_ms = self._blend(profile.head_fwd_ms, head_fwd, seen)
        profile.tail_ms = self._blend(profile.tail_ms, tail, seen)
        profile.head_bwd_ms = self._blend(profile.head_bwd_ms, head_bwd, seen)
        profile.measured = True

    def observe_helper(self, node: int, body_fwd_ms: float, body_bwd_ms: float) -> None:
        """Update a helper's body times from its measured task means."""
        profile = self.helpers.get(node)
        if profile is None:
            return
        seen = profile.measured
        profile.body_fwd_ms = self._blend(profile.body_fwd_ms, body_fwd_ms, seen)
        profile.body_bwd_ms = self._blend(profile.body_bwd_ms, body_bwd_ms, seen)
        profile.measured = True

    # -- planning ---------------------------------------------------------------------

    def instance(self, clients: Sequence[int], helpers: Sequence[int]) -> Instance:
        """The planner instance of one batch for these clients and helpers."""
        k, h = len(clients), len(helpers)
        grids = {
            name: np.zeros((k, h))
            for name in ("head_fwd_up", "body_fwd", "tail_fwd_bwd", "body_bwd", "down_head_bwd")
        }
        for i, client in enumerate(clients):
            cp = self.clients[client]
            for j, helper in enumerate(helpers):
                hp = self.helpers[helper]
                rate, latency = self.link(client, helper)
                cut1 = transfer_ms(self.costs.cut1_bytes, rate, latency)
                cut2 = transfer_ms(self.costs.cut2_bytes, rate, latency)
                grids["head_fwd_up"][i, j] = cp.head_fwd_ms + cut1
                grids["body_fwd"][i, j] = hp.body_fwd_ms
                grids["tail_fwd_bwd"][i, j] = 2 * cut2 + cp.tail_ms
                grids["body_bwd"][i, j] = hp.body_bwd_ms
                grids["down_head_bwd"][i, j] = cut1 + cp.head_bwd_ms
        memory = [self.helpers[x].memory_mib for x in helpers]
        return Instance(
            client_ids=[f"c{c}" for c in clients],
            helper_ids=[f"h{x}" for x in helpers],
            body_memory=np.full(k, self.costs.body_memory_mib),
            helper_memory=np.array([m if np.isfinite(m) else 1e12 for m in memory]),
            **grids,
        )

    def plan(
        self,
        server_round: int,
        clients: Sequence[int],
        helpers: Sequence[int],
        batches: dict[int, int],
    ) -> RoundPlan:
        """Solve the round: assignment, per-helper order, predicted round makespan."""
        clients = [c for c in clients if c in self.clients]
        helpers = [x for x in helpers if x in self.helpers]
        if not helpers:
            raise RuntimeError("no helper left to plan with")
        start = time.perf_counter()
        instance = self.instance(clients, helpers)
        release = [self.clients[c].start_offset_ms for c in clients]
        # The one-batch plan sees each client's first forward arrive after its start offset.
        delayed = copy.copy(instance)
        delayed.head_fwd_up = instance.head_fwd_up + np.asarray(release)[:, None]
        plan = solve(
            delayed,
            method=self.method,
            time_limit=self.time_limit,
            seed=self.seed + server_round,
        )
        counts = [max(int(batches.get(c, 1)), 1) for c in clients]
        prediction = predict_round(instance, plan, counts, release)
        node_ids = {f"c{c}": c for c in clients} | {f"h{x}": x for x in helpers}
        return RoundPlan(
            instance=instance,
            plan=plan,
            prediction=prediction,
            batches=dict(zip(instance.client_ids, counts, strict=True)),
            planning_seconds=time.perf_counter() - start,
            node_ids=node_ids,
        )
