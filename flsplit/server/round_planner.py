"""Plan every round from live measurements.

The server keeps a profile per node: compute times of the parts it runs, one batch,
smoothed exponentially over rounds. Until a node has been measured its times are the
server's own measurement of the parts scaled by the node's reported compute factor.
Links are modelled as ``latency + bits / rate`` per transfer, from the link table the
server was given (emulated links, or rates the operator knows).

Each round, :class:`RoundPlanner` turns the profiles into a planner
:class:`~flsplit.plan.Instance` for the sampled clients and live helpers, solves it with
the configured method, and predicts the whole round (several batches per client) with
:func:`~flsplit.plan.scheduling.rounds.predict_round`. The plan's assignment and per-helper order
go out with the round's messages; the replies' measurements come back through
:meth:`RoundPlanner.observe_client` and :meth:`RoundPlanner.observe_helper`.

With :class:`CutCosts` (per-segment costs measured once for every candidate cut pair)
the planner also chooses each client's cut pair every round, jointly with assignment and
order (:func:`flsplit.plan.cuts.optimize.optimize_cuts`). A node's times at any cut are then the
server's times of its parts scaled by the node's *speed factor*: its reported compute
factor at first, then measured / predicted time of the parts it ran, smoothed
exponentially, so a measurement at one cut carries over to every other cut. The
baselines (:data:`FIXED_CUT_METHODS`) keep the default cut pair.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flsplit.plan import Instance, Plan, solve
from flsplit.plan.cuts.optimize import CUT_METHODS, optimize_cuts, repick_plan
from flsplit.plan.cuts.problem import (
    CutProblem,
    LayerProfile,
    NodeCosts,
    build_problem,
    layer_profile,
)
from flsplit.plan.scheduling.rounds import RoundPrediction, predict_round

LinkFn = Callable[[int, int], tuple[float, float]]  # (client, helper) -> (Mbit/s, latency ms)

#: Planner methods that keep the default cut pair even when cut candidates are given:
#: the baselines, which the optimizing methods are compared against.
FIXED_CUT_METHODS: frozenset[str] = frozenset({"random-fcfs", "balanced-fcfs"})
#: Link rate (Mbit/s) standing for "free" (a link function's rate 0) in cut problems.
FREE_LINK_MBPS = 1e12
#: Memory (MiB) standing for "unknown / unlimited".
UNLIMITED_MIB = 1e12
#: Smallest time (ms) of a profiled segment; a measured 0 would read as "no data".
MIN_SEGMENT_MS = 1e-4


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


def _cut_names(cuts: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in cuts.split(",") if c.strip())


@dataclass(frozen=True)
class CutCosts:
    """Per-segment costs measured once on the server's machine, for candidate cut pairs.

    The model is profiled with a boundary at every cut any candidate pair (or the
    default pair) uses: segment 0 runs up to the first boundary, segment ``i`` starts at
    ``boundaries[i - 1]``. A pair ``"a,b"`` is the cut pair ``(c1, c2)`` of the planner's
    builder with ``c1 = boundaries.index(a) + 1`` (likewise ``c2``).

    Attributes
    ----------
    profile : LayerProfile
        Segment sizes and the server's times (its only device column).
    boundaries : tuple of str
        Cut names, in execution order.
    candidates : tuple of str
        The candidate pairs (``"a,b"``) the optimizing planners choose from.
    default : str
        The default pair (kept by :data:`FIXED_CUT_METHODS`).
    """

    profile: LayerProfile
    boundaries: tuple[str, ...]
    candidates: tuple[str, ...]
    default: str

    @classmethod
    def from_profile(
        cls, profile: Mapping[str, Any], candidates: Sequence[str], default: str
    ) -> CutCosts:
        """Costs from a profile of :func:`flsplit.model.profile.profile_model` (layer names
        ``[first child, *boundaries]``, one device column).

        Raises
        ------
        ValueError
            When a pair is not two boundaries of the profile in execution order.
        """
        data = dict(profile)
        column = dict(next(iter(data["devices"].values())))
        for key in ("forward_ms", "backward_ms", "update_ms"):
            column[key] = [max(float(v), MIN_SEGMENT_MS) for v in column[key]]
        data["devices"] = {"server": column}
        parsed = layer_profile(data)
        boundaries = tuple(str(layer["name"]) for layer in data["layers"][1:])
        costs = cls(parsed, boundaries, tuple(candidates), default)
        for pair in (*costs.candidates, default):
            costs.pair(pair)
        if not costs.candidates:
            raise ValueError("cut candidates: none given")
        return costs

    def pair(self, cuts: str) -> tuple[int, int]:
        """The builder's ``(c1, c2)`` of the pair ``"a,b"``."""
        names = _cut_names(cuts)
        if len(names) != 2 or any(n not in self.boundaries for n in names):
            raise ValueError(
                f"cut pair {cuts!r}: expected two of the profiled cuts "
                f"({', '.join(self.boundaries)})"
            )
        c1, c2 = (self.boundaries.index(n) + 1 for n in names)
        if c1 >= c2:
            raise ValueError(f"cut pair {cuts!r}: cuts must be distinct and in execution order")
        return c1, c2

    @property
    def pairs(self) -> np.ndarray:
        """``P x 2`` builder pairs of :attr:`candidates`."""
        return np.array([self.pair(c) for c in self.candidates], dtype=int).reshape(-1, 2)

    def _times(self) -> tuple[np.ndarray, np.ndarray]:
        column = next(iter(self.profile.devices.values()))
        fwd = np.asarray(column["forward_ms"], dtype=float)
        bwd = np.asarray(column["backward_ms"], dtype=float)
        return fwd, bwd + np.asarray(column["update_ms"], dtype=float)

    def part_costs(self, cuts: str) -> PartCosts:
        """Head, body and tail costs on the server's machine for the pair ``cuts``."""
        c1, c2 = self.pair(cuts)
        fwd, bwd = self._times()
        activation = self.profile.activation_kib
        return PartCosts(
            head_fwd_ms=float(fwd[:c1].sum()),
            head_bwd_ms=float(bwd[:c1].sum()),
            body_fwd_ms=float(fwd[c1:c2].sum()),
            body_bwd_ms=float(bwd[c1:c2].sum()),
            tail_ms=float(fwd[c2:].sum() + bwd[c2:].sum()),
            cut1_bytes=int(activation[c1 - 1] * 1024),
            cut2_bytes=int(activation[c2 - 1] * 1024),
            body_memory_mib=self.profile.memory_mib(c1, c2),
        )

    def body_weights_kib(self, cuts: str) -> float:
        """Parameter size of the body of the pair ``cuts`` (0: the helper trains nothing)."""
        c1, c2 = self.pair(cuts)
        return float(self.profile.weights_kib[c1:c2].sum())

    def client_memory_mib(self, cuts: str) -> float:
        """Memory a client needs for the head and tail of the pair ``cuts``."""
        c1, c2 = self.pair(cuts)
        return self.profile.memory_mib(0, c1) + self.profile.memory_mib(c2, self.num_segments)

    @property
    def num_segments(self) -> int:
        """Number of profiled segments."""
        return self.profile.num_layers

    def node(self, name: str, factor: float, memory_mib: float) -> NodeCosts:
        """Costs of a node ``factor`` times slower than the server, for the builder."""
        column = next(iter(self.profile.devices.values()))
        memory = memory_mib if np.isfinite(memory_mib) else UNLIMITED_MIB
        return NodeCosts.from_layers(
            name,
            [factor * v for v in column["forward_ms"]],
            [factor * v for v in column["backward_ms"]],
            [factor * v for v in column["update_ms"]],
            memory,
        )


@dataclass
class ClientProfile:
    """Compute times of a client's head and tail (ms per batch) at the default cut, its
    speed factor (times slower than the server) and its memory."""

    head_fwd_ms: float
    head_bwd_ms: float
    tail_ms: float
    measured: bool = False
    start_offset_ms: float = 0.0
    factor: float = 1.0
    memory_mib: float = float("inf")


@dataclass
class HelperProfile:
    """Compute times of a helper's body tasks (ms per batch) at the default cut, its speed
    factor (times slower than the server) and its memory."""

    body_fwd_ms: float
    body_bwd_ms: float
    memory_mib: float
    measured: bool = False
    factor: float = 1.0


@dataclass
class RoundPlan:
    """The plan of one round and what it predicts.

    Attributes
    ----------
    instance : Instance
        Stage times of one batch at the planned cuts.
    plan : Plan
        Assignment and per-helper order (planner ids ``c<node>`` / ``h<node>``).
    prediction : RoundPrediction
        The whole round replayed from the one-batch plan.
    batches : dict
        Planner client id -> batches it runs this round.
    planning_seconds : float
        Time spent planning.
    node_ids : dict
        Planner id -> node id.
    cuts : dict
        Planner client id -> its cut pair (``"a,b"``); empty when everybody keeps the
        default pair.
    left_out : list of int
        Sampled clients that hold no candidate pair in their memory (not planned).
    """

    instance: Instance
    plan: Plan
    prediction: RoundPrediction
    batches: dict[str, int]
    planning_seconds: float
    node_ids: dict[str, int] = field(default_factory=dict)
    cuts: dict[str, str] = field(default_factory=dict)
    left_out: list[int] = field(default_factory=list)

    def helper_of(self) -> dict[int, int]:
        """Client node id -> helper node id."""
        return {self.node_ids[c]: self.node_ids[h] for c, h in self.plan.assignment.items()}

    def order_of(self, helper: int) -> list[str]:
        """The helper's task priority list as sent to it (``"client:fwd"`` strings)."""
        name = f"h{helper}"
        return [f"{self.node_ids[c]}:{kind}" for c, kind in self.plan.order.get(name, [])]

    def cuts_of(self) -> dict[int, str]:
        """Client node id -> its cut pair (empty when the plan keeps the default cut)."""
        return {self.node_ids[c]: pair for c, pair in self.cuts.items()}

    def cut_counts(self) -> dict[str, int]:
        """How many clients got each cut pair, most used first."""
        return dict(Counter(self.cuts.values()).most_common())


def _round_plan(
    instance: Instance,
    plan: Plan,
    clients: Sequence[int],
    helpers: Sequence[int],
    batches: Mapping[int, int],
    release: Sequence[float],
    start: float,
) -> RoundPlan:
    """Predict the whole round of a one-batch plan and wrap it with its node ids."""
    counts = [max(int(batches.get(c, 1)), 1) for c in clients]
    return RoundPlan(
        instance=instance,
        plan=plan,
        prediction=predict_round(instance, plan, counts, list(release)),
        batches=dict(zip(instance.client_ids, counts, strict=True)),
        planning_seconds=time.perf_counter() - start,
        node_ids={f"c{c}": c for c in clients} | {f"h{x}": x for x in helpers},
    )


def transfer_ms(nbytes: float, rate_mbps: float, latency_ms: float) -> float:
    """Time to move ``nbytes`` over a link."""
    seconds = nbytes * 8.0 / (rate_mbps * 1e6) if rate_mbps > 0 else 0.0
    return latency_ms + 1000.0 * seconds


class RoundPlanner:
    """Per-round planning from node profiles that measurements keep up to date.

    Parameters
    ----------
    costs : PartCosts
        The parts' costs on the server's machine at the default cut.
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
    cut_costs : CutCosts, optional
        Per-segment costs of the candidate cut pairs: every round also chooses each
        client's pair (not with the baselines of :data:`FIXED_CUT_METHODS`).
    cut_method : str
        Method of :func:`flsplit.plan.cuts.optimize.optimize_cuts` (``auto``, ``integrated``,
        ``alternating``, ``exact``); ``method`` is its planner.
    """

    def __init__(
        self,
        costs: PartCosts,
        link: LinkFn,
        method: str = "auto",
        time_limit: float = 2.0,
        seed: int = 0,
        smoothing: float = 0.6,
        cut_costs: CutCosts | None = None,
        cut_method: str = "auto",
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing={smoothing} must be in (0, 1]")
        if cut_method not in CUT_METHODS:
            raise ValueError(f"cut-method {cut_method!r} is not one of {', '.join(CUT_METHODS)}")
        self.costs = costs
        self.link = link
        self.method = method
        self.time_limit = time_limit
        self.seed = seed
        self.smoothing = smoothing
        self.cut_costs = cut_costs
        self.cut_method = cut_method
        self.clients: dict[int, ClientProfile] = {}
        self.helpers: dict[int, HelperProfile] = {}
        #: Mean batch size over the full batch size per client (a last, smaller batch
        #: per epoch makes it below 1); transfers of a mean batch scale with it.
        self.batch_fill: dict[int, float] = {}

    @property
    def chooses_cuts(self) -> bool:
        """Whether :meth:`plan` chooses each client's cut pair."""
        return self.cut_costs is not None and self.method not in FIXED_CUT_METHODS

    # -- profiles ---------------------------------------------------------------------

    def add_client(
        self, node: int, compute_factor: float = 1.0, memory_mib: float = float("inf")
    ) -> None:
        """Register a client whose compute is ``compute_factor`` times the server's and
        that has ``memory_mib`` for its head and tail."""
        c = self.costs
        self.clients[node] = ClientProfile(
            c.head_fwd_ms * compute_factor,
            c.head_bwd_ms * compute_factor,
            c.tail_ms * compute_factor,
            factor=compute_factor,
            memory_mib=memory_mib,
        )

    def add_helper(
        self, node: int, compute_factor: float = 1.0, memory_mib: float = float("inf")
    ) -> None:
        """Register a helper whose compute is ``compute_factor`` times the server's."""
        c = self.costs
        self.helpers[node] = HelperProfile(
            c.body_fwd_ms * compute_factor,
            c.body_bwd_ms * compute_factor,
            memory_mib,
            factor=compute_factor,
        )

    def state_dict(self) -> dict[str, Any]:
        """The node profiles as plain JSON-ready data (for checkpoints)."""
        return {
            "clients": {str(n): asdict(p) for n, p in self.clients.items()},
            "helpers": {str(n): asdict(p) for n, p in self.helpers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore profiles saved by :meth:`state_dict` (a resumed run)."""
        self.clients = {
            int(n): ClientProfile(**p) for n, p in state.get("clients", {}).items()
        }
        self.helpers = {
            int(n): HelperProfile(**p) for n, p in state.get("helpers", {}).items()
        }

    def mark_provisional(self, node: int) -> None:
        """Let the next measurement of ``node`` replace its profile instead of being
        averaged in (after a warm-up round, say)."""
        profile = self.clients.get(node) or self.helpers.get(node)
        if profile is not None:
            profile.measured = False

    def drop(self, node: int) -> None:
        """Forget a node that failed or left; it is planned out from now on."""
        self.clients.pop(node, None)
        self.helpers.pop(node, None)

    def _blend(self, old: float, new: float, measured: bool) -> float:
        return new if not measured else self.smoothing * new + (1 - self.smoothing) * old

    def _costs_at(self, cuts: str | None) -> PartCosts:
        if cuts is None or self.cut_costs is None or cuts == self.cut_costs.default:
            return self.costs
        return self.cut_costs.part_costs(cuts)

    def observe_client(
        self,
        node: int,
        helper: int,
        stage1_ms: float,
        stage3_ms: float,
        stage5_ms: float,
        start_offset_ms: float = 0.0,
        cuts: str | None = None,
    ) -> None:
        """Update a client's profile from its measured stage means with ``helper`` at the
        cut pair ``cuts`` (default: the default pair), and how long after the round's
        first client it started training.

        The compute times at the default cut are smoothed as measured (when ``cuts`` is
        the default pair); the speed factor as measured / predicted compute of head and
        tail on the server (when per-segment costs are known)."""
        profile = self.clients.get(node)
        if profile is None:
            return
        costs = self._costs_at(cuts)
        rate, latency = self.link(node, helper)
        fill = self.batch_fill.get(node, 1.0)
        up1 = transfer_ms(costs.cut1_bytes * fill, rate, latency)
        up2 = transfer_ms(costs.cut2_bytes * fill, rate, latency)
        head_fwd = max(stage1_ms - up1, 0.0)
        tail = max(stage3_ms - 2 * up2, 0.0)
        head_bwd = max(stage5_ms - up1, 0.0)
        seen = profile.measured
        profile.start_offset_ms = self._blend(profile.start_offset_ms, start_offset_ms, seen)
        if costs is self.costs:
            profile.head_fwd_ms = self._blend(profile.head_fwd_ms, head_fwd, seen)
            profile.tail_ms = self._blend(profile.tail_ms, tail, seen)
            profile.head_bwd_ms = self._blend(profile.head_bwd_ms, head_bwd, seen)
        predicted = costs.head_fwd_ms + costs.tail_ms + costs.head_bwd_ms
        measured = head_fwd + tail + head_bwd
        if predicted > 0 and measured > 0:
            profile.factor = self._blend(profile.factor, measured / predicted, seen)
        profile.measured = True

    def observe_helper(
        self,
        node: int,
        body_fwd_ms: float,
        body_bwd_ms: float,
        served: Mapping[str, int] | None = None,
    ) -> None:
        """Update a helper's profile from its measured task means.

        ``served`` counts the forward tasks the helper ran per cut pair (default: all at
        the default pair); the speed factor becomes measured / predicted body time."""
        profile = self.helpers.get(node)
        if profile is None:
            return
        counts = {cuts: n for cuts, n in (served or {}).items() if n > 0}
        parts = [(self._costs_at(cuts), n) for cuts, n in counts.items()] or [(self.costs, 1)]
        seen = profile.measured
        if all(costs is self.costs for costs, _ in parts):
            profile.body_fwd_ms = self._blend(profile.body_fwd_ms, body_fwd_ms, seen)
            profile.body_bwd_ms = self._blend(profile.body_bwd_ms, body_bwd_ms, seen)
        total = sum(n for _, n in parts)
        predicted = sum(n * (c.body_fwd_ms + c.body_bwd_ms) for c, n in parts) / total
        measured = body_fwd_ms + body_bwd_ms
        if predicted > 0 and measured > 0:
            profile.factor = self._blend(profile.factor, measured / predicted, seen)
        profile.measured = True

    # -- planning ---------------------------------------------------------------------

    def instance(self, clients: Sequence[int], helpers: Sequence[int]) -> Instance:
        """The planner instance of one batch at the default cut for these nodes."""
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
                fill = self.batch_fill.get(client, 1.0)
                cut1 = transfer_ms(self.costs.cut1_bytes * fill, rate, latency)
                cut2 = transfer_ms(self.costs.cut2_bytes * fill, rate, latency)
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

    def cut_problem(self, clients: Sequence[int], helpers: Sequence[int]) -> CutProblem:
        """Stage times of one batch for these nodes at every candidate cut pair.

        Every node's times are the server's per-segment times scaled by its speed
        factor; links add ``latency + bits / rate`` per transfer. ``allowed`` excludes
        the pairs whose head and tail do not fit a client's memory.
        """
        cut_costs = self.cut_costs
        if cut_costs is None:
            raise RuntimeError("cut_problem needs per-segment costs (cut_costs)")
        links = [[self.link(c, x) for x in helpers] for c in clients]
        rates = np.array([[r if r > 0 else FREE_LINK_MBPS for r, _ in row] for row in links])
        # a batch that is fill times the full one takes 1 / fill as long per byte's worth
        rates = rates / np.array([self.batch_fill.get(c, 1.0) for c in clients])[:, None]
        latency = np.array([[lat for _, lat in row] for row in links]).reshape(rates.shape)
        problem = build_problem(
            cut_costs.profile,
            [cut_costs.node(f"c{c}", p.factor, p.memory_mib) for c, p in self._of(clients)],
            [cut_costs.node(f"h{x}", p.factor, p.memory_mib) for x, p in self._of(helpers)],
            rates,
            cut_costs.pairs,
            client_ids=[f"c{c}" for c in clients],
            helper_ids=[f"h{x}" for x in helpers],
            meta={"candidates": list(cut_costs.candidates)},
        )
        lat = latency[:, :, None]
        problem.stages["head_fwd_up"] = problem.stages["head_fwd_up"] + lat
        problem.stages["tail_fwd_bwd"] = problem.stages["tail_fwd_bwd"] + 2 * lat
        problem.stages["down_head_bwd"] = problem.stages["down_head_bwd"] + lat
        return problem

    def _of(self, nodes: Sequence[int]) -> list[tuple[int, ClientProfile | HelperProfile]]:
        return [(n, self.clients.get(n) or self.helpers[n]) for n in nodes]

    def plan(
        self,
        server_round: int,
        clients: Sequence[int],
        helpers: Sequence[int],
        batches: dict[int, int],
    ) -> RoundPlan:
        """Solve the round: assignment, per-helper order (and, with cut candidates, each
        client's cut pair), predicted round makespan."""
        clients = [c for c in clients if c in self.clients]
        helpers = [x for x in helpers if x in self.helpers]
        if not helpers:
            raise RuntimeError("no helper left to plan with")
        if self.chooses_cuts:
            return self._plan_cuts(server_round, clients, helpers, batches)
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
        return _round_plan(instance, plan, clients, helpers, batches, release, start)

    def _plan_cuts(
        self,
        server_round: int,
        clients: list[int],
        helpers: list[int],
        batches: dict[int, int],
    ) -> RoundPlan:
        """Cut pair, helper and order per client from the joint cut optimizer."""
        start = time.perf_counter()
        problem = self.cut_problem(clients, helpers)
        fits = problem.allowed.any(axis=1)
        left_out = [c for c, ok in zip(clients, fits, strict=True) if not ok]
        if left_out:
            clients = [c for c, ok in zip(clients, fits, strict=True) if ok]
            if not clients:
                raise RuntimeError(
                    "no sampled client can hold the head and tail of any candidate cut pair "
                    f"in its memory (clients {left_out})"
                )
            problem = self.cut_problem(clients, helpers)
        release = np.array([self.clients[c].start_offset_ms for c in clients])
        # The one-batch plan sees each client's first forward arrive after its start offset.
        delayed = dataclasses.replace(
            problem,
            stages={
                **problem.stages,
                "head_fwd_up": problem.stages["head_fwd_up"] + release[:, None, None],
            },
        )
        seed = self.seed + server_round
        result = optimize_cuts(
            delayed,
            method=self.cut_method,
            time_limit=self.time_limit,
            seed=seed,
            solver=self.method,
        )
        result = repick_plan(delayed, result, time_limit=min(0.5, self.time_limit))
        choice = np.array([delayed.pair_index(result.cuts[c]) for c in problem.client_ids])
        instance = problem.instance(choice)
        plan = result.plan
        labels = self.cut_costs.candidates if self.cut_costs else ()
        round_plan = _round_plan(instance, plan, clients, helpers, batches, list(release), start)
        round_plan.cuts = {c: labels[p] for c, p in zip(problem.client_ids, choice, strict=True)}
        round_plan.left_out = left_out
        return round_plan
