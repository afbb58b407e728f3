"""Plan every round from the node profiles.

Each round, :class:`RoundPlanner` turns the node profiles
(:class:`~flsplit.server.node_profiles.NodeProfiles`) into a planner
:class:`~flsplit.plan.Instance` for the sampled clients and live helpers, solves it with
the configured method, and predicts the whole round (several batches per client) with
:func:`~flsplit.plan.scheduling.rounds.predict_round`. The plan's assignment and per-helper order
go out with the round's messages; the replies' measurements come back through
:meth:`RoundPlanner.observe_client` and :meth:`RoundPlanner.observe_helper`.

With :class:`~flsplit.model.costs.CutCosts` the planner also chooses each client's cut
pair every round, jointly with assignment and order
(:func:`flsplit.plan.cuts.optimize.optimize_cuts`), from every node's per-segment times
scaled by its speed factor. The baselines (:data:`FIXED_CUT_METHODS`) keep the default
cut pair.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flsplit.config import CodecSetting
from flsplit.model.costs import CutCosts, PartCosts
from flsplit.plan import Instance, Plan, solve
from flsplit.plan.cuts.optimize import CUT_METHODS, optimize_cuts, repick_plan
from flsplit.plan.cuts.problem import CutProblem, build_problem
from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.scheduling.packing import packable_clients
from flsplit.plan.scheduling.rounds import RoundPrediction, predict_round
from flsplit.protocol import HelperTask
from flsplit.server.node_profiles import (
    ClientProfile,
    HelperProfile,
    LinkFn,
    NodeProfiles,
)

#: Planner methods that keep the default cut pair even when cut candidates are given:
#: the baselines, which the optimizing methods are compared against.
FIXED_CUT_METHODS: frozenset[str] = frozenset({"random-fcfs", "balanced-fcfs"})
#: Link rate (Mbit/s) standing for "free" (a link function's rate 0) in cut problems.
FREE_LINK_MBPS = 1e12


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
        Sampled clients not planned this round (they sit it out).
    left_out_reason : str
        Why they sit out (empty when nobody does).
    """

    instance: Instance
    plan: Plan
    prediction: RoundPrediction
    batches: dict[str, int]
    planning_seconds: float
    node_ids: dict[str, int] = field(default_factory=dict)
    cuts: dict[str, str] = field(default_factory=dict)
    left_out: list[int] = field(default_factory=list)
    left_out_reason: str = ""

    def helper_of(self) -> dict[int, int]:
        """Client node id -> helper node id."""
        return {self.node_ids[c]: self.node_ids[h] for c, h in self.plan.assignment.items()}

    def order_of(self, helper: int) -> list[HelperTask]:
        """The helper's task priority list as sent to it."""
        name = f"h{helper}"
        order = self.plan.order.get(name, [])
        return [HelperTask(str(self.node_ids[c]), kind) for c, kind in order]

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


def _per_batch(
    release: Sequence[float], clients: Sequence[int], batches: Mapping[int, int]
) -> np.ndarray:
    """Each client's start offset as the one-batch plan sees it: spread over the batches
    it runs this round.

    The plan is solved for one batch and replayed for the round, whose makespan is about
    a client's offset plus its batches: per batch, the offset's share. Added whole to one
    batch, a client that started 1.3 s late in the last round (a late dispatch) outweighed
    every link and compute choice of a 0.5 s batch: the plan put the slowest client on a
    2 Mbit/s link, and the 12-batch round took 13.2 s instead of 6.8
    (``examples/heterogeneous``). The round's prediction still starts each client at its
    whole offset.
    """
    counts = np.array([max(int(batches.get(c, 1)), 1) for c in clients], dtype=float)
    return np.asarray(release, dtype=float) / counts


class RoundPlanner(NodeProfiles):
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
    activations, gradients : CodecSetting, optional
        The data plane's codecs: every plan and prediction charges a link the bytes they
        send. The planner does not choose them.

    Raises
    ------
    ValueError
        If ``smoothing`` is not in (0, 1] or ``cut_method`` is unknown.
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
        activations: CodecSetting | None = None,
        gradients: CodecSetting | None = None,
    ) -> None:
        super().__init__(
            costs, link, smoothing=smoothing, cut_costs=cut_costs,
            activations=activations, gradients=gradients,
        )
        if cut_method not in CUT_METHODS:
            raise ValueError(f"cut-method {cut_method!r} is not one of {', '.join(CUT_METHODS)}")
        self.method = method
        self.time_limit = time_limit
        self.seed = seed
        self.cut_method = cut_method

    @property
    def chooses_cuts(self) -> bool:
        """Whether :meth:`plan` chooses each client's cut pair."""
        return self.cut_costs is not None and self.method not in FIXED_CUT_METHODS

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
                up1, down1, cut2 = self.cut_transfers_ms(self.costs, client, rate, latency)
                grids["head_fwd_up"][i, j] = cp.load_ms + cp.head_fwd_ms + up1
                grids["body_fwd"][i, j] = hp.body_fwd_ms
                grids["tail_fwd_bwd"][i, j] = cut2 + cp.tail_ms
                grids["body_bwd"][i, j] = hp.body_bwd_ms
                grids["down_head_bwd"][i, j] = down1 + cp.head_bwd_ms
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
        factor; links add ``latency + bits / rate`` per transfer (the bits each
        direction's codec sends); a client's load time
        adds to its stage 1 at every pair. ``allowed`` excludes the pairs whose head and
        tail do not fit a client's memory.
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
        # The builder charges raw bytes both ways; charge each direction the bytes of the
        # client's codec (its own, as reported, or the run config's).
        codecs = [self.codecs_of(c) for c in clients]
        act = np.array([a.byte_ratio for a, _ in codecs])[:, None, None]
        grad = np.array([g.byte_ratio for _, g in codecs])[:, None, None]
        tx1, tx2 = (
            (problem.cut_kib[:, i] * KIB_TO_MS_AT_1MBIT)[None, None, :] / rates[..., None]
            for i in (0, 1)
        )
        lat = latency[:, :, None]
        load = np.array([self.clients[c].load_ms for c in clients])[:, None, None]
        stages = problem.stages
        stages["head_fwd_up"] = stages["head_fwd_up"] + (act - 1) * tx1 + lat + load
        stages["tail_fwd_bwd"] = stages["tail_fwd_bwd"] + (act + grad - 2) * tx2 + 2 * lat
        stages["down_head_bwd"] = stages["down_head_bwd"] + (grad - 1) * tx1 + lat
        # what a cut's two crossings send on average, for rates changed later (shared
        # links, which live plans do not model: the clients' mean where codecs differ)
        problem.cut_kib = problem.cut_kib * float(np.mean(act + grad)) / 2
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
        clients, left_out = self._fitting(clients, helpers)
        instance = self.instance(clients, helpers)
        release = [self.clients[c].start_offset_ms for c in clients]
        delayed = copy.copy(instance)
        delayed.head_fwd_up = instance.head_fwd_up + _per_batch(release, clients, batches)[:, None]
        plan = solve(
            delayed,
            method=self.method,
            time_limit=self.time_limit,
            seed=self.seed + server_round,
        )
        round_plan = _round_plan(instance, plan, clients, helpers, batches, release, start)
        if left_out:
            round_plan.left_out = left_out
            round_plan.left_out_reason = (
                f"their bodies ({self.costs.body_memory_mib:g} MiB each) do not fit in the "
                "helpers' memory next to the planned clients'")
        return round_plan

    def _fitting(self, clients: list[int], helpers: list[int]) -> tuple[list[int], list[int]]:
        """The clients whose bodies pack into the helpers' memory, and those left out.

        When not all fit, the fewest clients sit out (the latest sampled ones, since all
        bodies are equal at the default cut).

        Raises
        ------
        RuntimeError
            If not even one body fits on any helper.
        """
        body = np.full(len(clients), self.costs.body_memory_mib)
        capacity = np.array([min(self.helpers[x].memory_mib, 1e12) for x in helpers])
        kept = packable_clients(body, capacity)
        if not kept:
            raise RuntimeError(
                f"no sampled client can be planned: a body needs "
                f"{self.costs.body_memory_mib:g} MiB but the largest of the helpers "
                f"{list(helpers)} holds {capacity.max():g} MiB")
        keep = set(kept)
        return ([c for i, c in enumerate(clients) if i in keep],
                [c for i, c in enumerate(clients) if i not in keep])

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
        delayed = dataclasses.replace(
            problem,
            stages={
                **problem.stages,
                "head_fwd_up": problem.stages["head_fwd_up"]
                + _per_batch(release, clients, batches)[:, None, None],
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
        round_plan.left_out_reason = ("they cannot hold the head and tail of any candidate "
                                      "cut pair in their memory")
        return round_plan
