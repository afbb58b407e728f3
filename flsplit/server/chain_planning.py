"""Plan every round's helper chains from live measurements (a planner and chains).

Each round, :class:`ChainRoundPlanner` turns the node speeds it keeps (reported compute
factor at first, then measured / predicted time of what the node ran, smoothed), the
nodes' memory and the link table into a multi-client chain problem
(:class:`~flsplit.plan.multihop.chain_problem.ChainProblem`) over the model's segments
(:class:`~flsplit.model.segment_costs.SegmentCosts`), and solves it with the chain
planner (:func:`~flsplit.plan.multihop.chain_planner.plan_chains`): every client's route
(which helpers, in order; one hop stays a candidate), its cuts (outer and inner), its
micro-batch count and each helper's task order, jointly for all clients sharing helpers.
The plan is judged by :func:`~flsplit.plan.multihop.chain_evaluation.evaluate_chain`.

Routes use only links that exist: every client reaches every helper; helper-helper links
are all by default, or those a link function names (run config ``helper-links`` and the
helpers' node configs). Every hop is charged the bytes its codecs send
(:attr:`~flsplit.config.CodecSetting.byte_ratio`): the client's (run config
``compress-activations`` / ``compress-gradients``, or its node config's as it reported
them), on a helper-helper hop the first helper's node config's where it sets one. With
``chain-length = k`` a route has at most ``k`` hops (a longer planned route has adjacent
hops merged onto one of their helpers, re-judged).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from flsplit.config import CodecSetting, parse_codec
from flsplit.model.segment_costs import SegmentCosts
from flsplit.plan.multihop.chain_evaluation import (
    ClientStages,
    all_stages,
    evaluate_chain,
    simulate,
)
from flsplit.plan.multihop.chain_planner import judge_routes, plan_chains
from flsplit.plan.multihop.chain_problem import ChainPlan, ChainProblem, ChainRoute
from flsplit.plan.multihop.problem import MultihopError, MultihopProblem
from flsplit.protocol import BACKWARD, FORWARD, HelperTask
from flsplit.server.node_profiles import LinkFn

#: ``helper_link(a, b) -> (Mbit/s, latency ms)`` between two helpers, ``None``: no link.
HelperLinkFn = Callable[[int, int], "tuple[float, float] | None"]
#: Link rate (Mbit/s) standing for "free" (a link function's rate 0): the chain problem
#: reads a rate of 0 as "no link".
FREE_LINK_MBPS = 1e9
#: Fixed time per micro-batch and stage (ms): a data-plane call's framing, checks and
#: thread hand-offs, which the per-sample costs do not hold; without it the planner would
#: cut batches into more micro-batches than pay.
MICRO_BATCH_OVERHEAD_MS = 2.0
#: Memory standing for "unlimited" (a node that reported none).
UNLIMITED_MIB = 1e12


@dataclass
class NodeSpeed:
    """What the planner keeps of a node: times slower than the server, memory (MiB)."""

    factor: float = 1.0
    memory_mib: float = UNLIMITED_MIB
    measured: bool = False
    start_offset_ms: float = 0.0  # a client: how long after the round's first it starts
    #: a client: what its round's first batch took beyond a steady one (the pieces and
    #: optimizers every round sets up), learned from its measured spans
    setup_ms: float = 0.0
    #: a client: time per micro-batch its rounds took beyond the plan (data-plane calls,
    #: thread hand-offs, waits the model does not see), learned from its measured spans
    overhead_ms: float = 0.0
    #: codec spellings: a client's data plane's, a helper's for its next hops ("": the
    #: run config's for a client, the client's for a helper's hop)
    activations: str = ""
    gradients: str = ""


@dataclass
class ChainRoundPlan:
    """One round's planned chains and what they predict.

    Attributes
    ----------
    problem : ChainProblem
        One batch of every planned client (planner ids ``c<node>`` / ``h<node>``).
    plan : ChainPlan
        Routes and helper orders, judged by the chain evaluator.
    routes : dict
        Client node -> its helpers in chain order.
    cuts : dict
        Client node -> its cuts, module names (outer and inner: ``len(route) + 1``).
    micro_batches : dict
        Client node -> micro-batches per batch.
    batches : dict
        Client node -> batches it runs this round.
    finish_ms : dict
        Client node -> its finish in the judged one-batch schedule (ms).
    predicted_ms : float
        The round's predicted makespan: the latest of each client's start offset plus
        its batches times its one-batch finish.
    planning_seconds : float
    left_out : list of int
        Sampled clients not planned (nothing fits them); ``left_out_reason`` says why.
    """

    problem: ChainProblem
    plan: ChainPlan
    routes: dict[int, list[int]]
    cuts: dict[int, str]
    micro_batches: dict[int, int]
    batches: dict[int, int]
    finish_ms: dict[int, float]
    predicted_ms: float
    planning_seconds: float
    positions: dict[int, tuple[int, ...]] = field(default_factory=dict)
    left_out: list[int] = field(default_factory=list)
    left_out_reason: str = ""

    def order_of(self, helper: int) -> list[HelperTask]:
        """The helper's task priority order: its clients in the order the plan first
        runs them, forward then backward."""
        index = self.problem.helper_ids.index(f"h{helper}") + 1
        ids = self.problem.client_ids
        seen: list[int] = []
        for k, _ in self.plan.orders.get(index, []):
            if k not in seen:
                seen.append(k)
        return [HelperTask(ids[k][1:], kind) for k in seen for kind in (FORWARD, BACKWARD)]

    def hops(self) -> dict[str, list[dict[str, Any]]]:
        """Client -> its hops (helper, first and last segment), JSON-ready."""
        out = {}
        for client, route in self.routes.items():
            q = self.positions[client]
            out[str(client)] = [
                {"helper": h, "segments": [int(q[i]), int(q[i + 1])]}
                for i, h in enumerate(route)
            ]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The plan, JSON-ready (``round-N.json``)."""
        return {
            "method": self.plan.method,
            "one_batch_ms": self.plan.makespan,
            "routes": {str(c): r for c, r in self.routes.items()},
            "cuts": {str(c): v for c, v in self.cuts.items()},
            "micro_batches": {str(c): m for c, m in self.micro_batches.items()},
            "hops": self.hops(),
            "chained_clients": sum(len(r) > 1 for r in self.routes.values()),
            "orders": {h[1:]: [[self.problem.client_ids[k][1:], m] for k, m in tasks]
                       for h, tasks in ((self.problem.helper_ids[v - 1], t)
                                        for v, t in sorted(self.plan.orders.items()))},
            "info": dict(self.plan.info),
        }


class ChainRoundPlanner:
    """Per-round chain planning from node speeds that measurements keep up to date.

    Parameters
    ----------
    costs : SegmentCosts
        The model's segments on the server's machine.
    link : callable
        ``link(client, helper) -> (rate Mbit/s, latency ms)``; a rate of 0 means free.
    helper_link : callable, optional
        ``helper_link(a, b) -> (rate, latency)`` or ``None`` (no link); default: every
        helper reaches every other over a free link.
    max_hops : int
        Most helpers in a client's chain.
    time_limit : float
        Seconds the chain planner may use.
    seed : int
        Seed of its local search.
    smoothing : float
        Weight of a new measurement in the exponential average.
    activations, gradients : CodecSetting, optional
        The run config's codecs (``compress-activations``, ``compress-gradients``): what
        a client's hops are charged unless it reported its own (:meth:`set_codecs`).
    """

    def __init__(
        self,
        costs: SegmentCosts,
        link: LinkFn,
        helper_link: HelperLinkFn | None = None,
        max_hops: int = 16,
        time_limit: float = 2.0,
        seed: int = 0,
        smoothing: float = 0.6,
        activations: CodecSetting | None = None,
        gradients: CodecSetting | None = None,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing={smoothing} must be in (0, 1]")
        self.activations = activations or CodecSetting()
        self.gradients = gradients or CodecSetting()
        self.costs = costs
        self.link = link
        self.helper_link = helper_link
        self.max_hops = max_hops
        self.time_limit = time_limit
        self.seed = seed
        self.smoothing = smoothing
        self.clients: dict[int, NodeSpeed] = {}
        self.helpers: dict[int, NodeSpeed] = {}

    # -- nodes (the interface PlannedSplitStrategy's discovery uses) --------------------

    def add_client(self, node: int, compute_factor: float = 1.0,
                   memory_mib: float = UNLIMITED_MIB) -> None:
        """Register a client ``compute_factor`` times slower than the server."""
        self.clients[node] = NodeSpeed(compute_factor, _finite(memory_mib))

    def add_helper(self, node: int, compute_factor: float = 1.0,
                   memory_mib: float = UNLIMITED_MIB) -> None:
        """Register a helper ``compute_factor`` times slower than the server."""
        self.helpers[node] = NodeSpeed(compute_factor, _finite(memory_mib))

    def set_codecs(self, node: int, activations: CodecSetting | None,
                   gradients: CodecSetting | None) -> None:
        """The codecs a node reported: a client's data plane's (``None``: the run
        config's), a helper's for the hops to its next helpers (``None``: the client's)."""
        speed = self.clients.get(node) or self.helpers.get(node)
        if speed is not None:
            speed.activations = "" if activations is None else str(activations)
            speed.gradients = "" if gradients is None else str(gradients)

    def codecs_of(self, client: int) -> tuple[CodecSetting, CodecSetting]:
        """The codecs of ``client``'s activations and gradients (on its own link)."""
        speed = self.clients.get(client)
        return (_codec(speed.activations if speed else "", self.activations),
                _codec(speed.gradients if speed else "", self.gradients))

    def hop_byte_ratio(self, client: int, helper: int | None = None) -> float:
        """Bytes sent per raw byte, activations and gradients averaged, on ``client``'s
        own link (``helper`` ``None``) or on the hop from ``helper`` to its next helper
        (the helper's node-config codecs where set, else the client's)."""
        activations, gradients = self.codecs_of(client)
        speed = self.helpers.get(helper) if helper is not None else None
        if speed is not None:
            activations = _codec(speed.activations, activations)
            gradients = _codec(speed.gradients, gradients)
        return (activations.byte_ratio + gradients.byte_ratio) / 2

    def drop(self, node: int) -> None:
        """Forget a node that failed or left."""
        self.clients.pop(node, None)
        self.helpers.pop(node, None)

    def mark_provisional(self, node: int) -> None:
        """Let the next measurement of ``node`` replace its speed (after a warm-up)."""
        speed = self.clients.get(node) or self.helpers.get(node)
        if speed is not None:
            speed.measured = False

    def state_dict(self) -> dict[str, Any]:
        """The node speeds, JSON-ready (checkpoints)."""
        return {"clients": {str(n): asdict(s) for n, s in self.clients.items()},
                "helpers": {str(n): asdict(s) for n, s in self.helpers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.clients = {int(n): NodeSpeed(**s) for n, s in state.get("clients", {}).items()}
        self.helpers = {int(n): NodeSpeed(**s) for n, s in state.get("helpers", {}).items()}

    # -- the problem -------------------------------------------------------------------

    def problem(self, clients: Sequence[int], helpers: Sequence[int]) -> ChainProblem:
        """One batch of each client over the helpers (in the given route order)."""
        costs = self.costs
        per_sample = costs.sample_ms()
        per_call = costs.call_ms()
        batch = costs.batch_size
        layers = costs.num_segments
        memory = costs.profile.memory_kib / 1024.0
        activation = costs.profile.activation_kib / batch
        n = len(helpers) + 1
        between = np.zeros((n, n))
        between_latency = np.zeros((n, n))
        for (i, a), (j, b) in itertools.combinations(enumerate(helpers, start=1), 2):
            link = (0.0, 0.0) if self.helper_link is None else self.helper_link(a, b)
            if link is None:
                continue
            rate, latency = link
            between[i, j] = between[j, i] = rate if rate > 0 else FREE_LINK_MBPS
            between_latency[i, j] = between_latency[j, i] = latency
        problems = []
        for client in clients:
            rate = between.copy()
            latency = between_latency.copy()
            # each hop's coded bytes: the client's codecs, a helper's own on the hops it
            # relays to its next helpers (routes follow the helpers' order)
            ratio = np.ones((n, n))
            for j, helper in enumerate(helpers, start=1):
                r, lat = self.link(client, helper)
                rate[0, j] = rate[j, 0] = r if r > 0 else FREE_LINK_MBPS
                latency[0, j] = latency[j, 0] = lat
                ratio[0, j] = ratio[j, 0] = self.hop_byte_ratio(client)
                ratio[j, j + 1:] = ratio[j + 1:, j] = self.hop_byte_ratio(client, helper)
            speeds = [self.clients[client], *(self.helpers[h] for h in helpers)]
            overhead = np.full(n, MICRO_BATCH_OVERHEAD_MS)
            overhead[0] += self.clients[client].overhead_ms
            problems.append(MultihopProblem(
                node_ids=[f"c{client}", *(f"h{h}" for h in helpers)],
                sample_ms=np.array([per_sample * s.factor for s in speeds]),
                runnable=np.ones((n, layers), dtype=bool),
                overhead_ms=overhead,
                # a node's fixed time per call is its factor times the server's, as its
                # time per sample: the factor is learned from both (_server_ms)
                call_ms=np.array([per_call * s.factor for s in speeds]),
                memory_mib=np.array([s.memory_mib for s in speeds]),
                layer_memory_mib=memory,
                activation_kib=activation,
                rate_mbps=rate,
                latency_ms=latency,
                batch_size=batch,
                byte_ratio=ratio,
                # the data plane sends each way at once, one transfer at a time per
                # direction (its up- and downlink), so micro-batches pipeline through a
                # link at one direction's time
                duplex=True,
                # the client's head runs once on the whole batch, forward before its
                # micro-batches leave and backward after they are back (MicroBatchStep)
                serial_head=True,
                # a chain's output comes back along the chain (ChainRelay), over the
                # client's link to its first helper
                return_along=True,
            ))
        return ChainProblem(problems, name="round")

    def plan(
        self,
        server_round: int,
        clients: Sequence[int],
        helpers: Sequence[int],
        batches: Mapping[int, int],
    ) -> ChainRoundPlan:
        """Solve the round: routes, cuts, micro-batches and helper orders.

        Raises
        ------
        RuntimeError
            If no helper is left, or no client can be planned (the message says why).
        """
        start = time.perf_counter()
        clients = [c for c in clients if c in self.clients]
        helpers = [h for h in helpers if h in self.helpers]
        if not helpers:
            raise RuntimeError("no helper left to plan with")
        planned, left_out, reason = list(clients), [], ""
        while True:
            if not planned:
                raise RuntimeError(f"no sampled client can be planned: {reason}")
            problem = self.problem(planned, helpers)
            try:
                plan = plan_chains(problem, time_limit=self.time_limit,
                                   seed=self.seed + server_round)
                plan = self._within_hops(problem, plan)
                break
            except MultihopError as exc:
                # nothing fits: the last sampled client sits the round out
                reason = str(exc)
                left_out.append(planned.pop())
        evaluate_chain(problem, plan)  # the one judge: raises if infeasible
        _, finish = simulate(all_stages(problem, plan.routes), plan.orders)
        routes, cuts, micro, positions = {}, {}, {}, {}
        for client, route, p, end in zip(planned, plan.routes, problem.clients, finish,
                                         strict=True):
            routes[client] = [helpers[v - 1] for v in route.helpers]
            cuts[client] = self.costs.cut_names(route.cuts)
            micro[client] = math.ceil(p.batch_size / route.micro_batch)
            positions[client] = tuple(int(q) for q in route.cuts)
            del end
        finish_ms = dict(zip(planned, (float(f) for f in finish), strict=True))
        counts = {c: max(int(batches.get(c, 1)), 1) for c in planned}
        predicted = max(self.clients[c].start_offset_ms + self.clients[c].setup_ms
                        + counts[c] * finish_ms[c]
                        for c in planned)
        return ChainRoundPlan(
            problem=problem, plan=plan, routes=routes, cuts=cuts, micro_batches=micro,
            batches=counts, finish_ms=finish_ms, predicted_ms=predicted,
            planning_seconds=time.perf_counter() - start, positions=positions,
            left_out=left_out, left_out_reason=reason if left_out else "",
        )

    def _within_hops(self, problem: ChainProblem, plan: ChainPlan) -> ChainPlan:
        """``plan`` with every route at most :attr:`max_hops` long: adjacent hops of a
        longer route merged onto one of their helpers (the merge judged best), orders
        list-scheduled again."""
        if all(len(r.helpers) <= self.max_hops for r in plan.routes):
            return plan
        routes = list(plan.routes)
        for k, route in enumerate(routes):
            while len(route.helpers) > self.max_hops:
                best: tuple[float, ChainRoute] | None = None
                for i in range(len(route.helpers) - 1):
                    for keep in (i, i + 1):
                        helpers = [*route.helpers[:i], route.helpers[keep],
                                   *route.helpers[i + 2:]]
                        cuts = [*route.cuts[:i + 1], *route.cuts[i + 2:]]
                        cand = ChainRoute(tuple(helpers), tuple(cuts), route.micro_batch)
                        judged = judge_routes(problem, [*routes[:k], cand, *routes[k + 1:]],
                                              plan.method, final=False)
                        if judged is not None and (best is None or judged.makespan < best[0]):
                            best = (judged.makespan, cand)
                if best is None:
                    raise MultihopError(
                        "helpers[*].memory_mib",
                        f"no chain of at most {self.max_hops} helpers holds client "
                        f"{problem.client_ids[k]!r}'s body next to the others'")
                route = routes[k] = best[1]
        merged = judge_routes(problem, routes, f"{plan.method}, at most {self.max_hops} hops")
        if merged is None:
            raise MultihopError("helpers[*].memory_mib", "merged hops do not fit")
        merged.info = dict(plan.info)
        return merged

    # -- measurements ------------------------------------------------------------------

    def _blend(self, speed: NodeSpeed, factor: float) -> None:
        if factor > 0 and math.isfinite(factor):
            speed.factor = factor if not speed.measured else (
                self.smoothing * factor + (1 - self.smoothing) * speed.factor)
            speed.measured = True

    def observe_client(self, node: int, round_plan: ChainRoundPlan, stage_ms: float | None,
                       start_offset_ms: float | None = None,
                       span_ms: float | None = None,
                       setup_ms: float | None = None) -> None:
        """Learn a client's speed from its measured compute per batch (ms: its head and
        tail compute; ``None``: not measured), how long after the round's first client
        it started, from its round's span (its steady batches) its time per
        micro-batch beyond the plan, and ``setup_ms``, what its first batch took beyond
        a steady one (every round sets up the client's pieces and optimizers; the
        prediction adds it once per round).

        The span's excess over the plan is charged to the per-micro-batch overhead only
        for what the measured compute does not explain: compute scales with the samples,
        the overhead with the micro-batches, so charging slow compute to the overhead
        (as well as to the speed) would count it twice and scale it wrongly when the
        next plan changes the micro-batch count.
        """
        speed = self.clients.get(node)
        if speed is None or node not in round_plan.positions:
            return

        def blend(old: float, new: float) -> float:
            return new if not speed.measured else (
                self.smoothing * new + (1 - self.smoothing) * old)

        q = round_plan.positions[node]
        micro = round_plan.micro_batches.get(node, 1)
        # one batch of its head and tail on the server, as the plan ran them
        predicted = self._server_ms(0, q[0], 1) + self._server_ms(q[-1], None, micro)
        measured = predicted > 0 and stage_ms is not None and stage_ms > 0
        # the compute this round took beyond what the plan gave it (its batches lie on
        # the client's own path, so the span grows by as much)
        compute_gap = stage_ms - self._planned_compute_ms(node, round_plan) if measured else 0.0
        if start_offset_ms is not None:
            # always averaged in, from 0 (not replaced by the first one measured): a
            # client's offset is mostly the round's scheduling of its start, which varies
            # from round to round (on examples/multihop uncorrelated between rounds), so
            # one late start moves the next prediction by part of it only
            speed.start_offset_ms = (self.smoothing * start_offset_ms
                                     + (1 - self.smoothing) * speed.start_offset_ms)
        if setup_ms is not None:
            speed.setup_ms = blend(speed.setup_ms, max(setup_ms, 0.0))
        if span_ms is not None and node in round_plan.finish_ms:
            batches = round_plan.batches.get(node, 1)
            extra = (span_ms / batches - round_plan.finish_ms[node] - compute_gap) / micro
            speed.overhead_ms = blend(speed.overhead_ms, max(speed.overhead_ms + extra, 0.0))
        if not measured:
            speed.measured = True
            return
        self._blend(speed, stage_ms / predicted)

    def _server_ms(self, start: int, stop: int | None, micro_batches: int) -> float:
        """One batch of segments ``start:stop`` on the server, cut into
        ``micro_batches`` calls: every call pays the segments' fixed time."""
        sample = self.costs.sample_ms()[start:stop].sum()
        call = self.costs.call_ms()[start:stop].sum()
        return float(sample * self.costs.batch_size + micro_batches * call)

    def _planned_compute_ms(self, node: int, round_plan: ChainRoundPlan) -> float:
        """The compute per batch the plan gave client ``node`` (head once, tail per
        micro-batch, at the speed it planned with)."""
        q = round_plan.positions[node]
        micro = round_plan.micro_batches.get(node, 1)
        for p in round_plan.problem.clients:
            if p.node_ids[0] == f"c{node}":
                assert p.call_ms is not None  # set in __post_init__
                sample, call = p.sample_ms[0], p.call_ms[0]
                return float((sample[:q[0]].sum() + sample[q[-1]:].sum()) * p.batch_size
                             + call[:q[0]].sum() + micro * call[q[-1]:].sum())
        return 0.0

    def observe_helper(self, node: int, round_plan: ChainRoundPlan,
                       busy_ms: Mapping[int, float]) -> None:
        """Learn a helper's speed from its busy time per client this round
        (client -> ms), against the server's time of the pieces it ran for them."""
        speed = self.helpers.get(node)
        if speed is None:
            return
        predicted = measured = 0.0
        for client, ms in busy_ms.items():
            route = round_plan.routes.get(client)
            if route is None or node not in route:
                continue
            i = route.index(node)
            q = round_plan.positions[client]
            batches = round_plan.batches.get(client, 1)
            micro = round_plan.micro_batches.get(client, 1)
            predicted += self._server_ms(q[i], q[i + 1], micro) * batches
            measured += ms
        if predicted > 0 and measured > 0:
            self._blend(speed, measured / predicted)


def stage_timeline(problem: ChainProblem, plan: ChainPlan) -> list[dict[str, Any]]:
    """Every operation of the judged one-batch schedule: client, stage (``client``,
    ``link``, or the helper), micro-batch, start and end (ms), for Gantt charts; a
    client's serial head is stage ``head`` (its forward first, its backward last)."""
    stages: list[ClientStages] = all_stages(problem, plan.routes)
    ids = problem.client_ids
    hids = problem.helper_ids
    free: dict[int, float] = {}
    pos = dict.fromkeys(plan.orders, 0)
    end = [[0.0] * len(cs.times) for cs in stages]
    done = [[0] * len(cs.times) for cs in stages]
    # a client's first stage starts after its serial head forward (lead_ms)
    ready = [[[cs.lead_ms if s == 0 else 0.0] * cs.micro_batches
              for s in range(len(cs.times))] for cs in stages]
    out: list[dict[str, Any]] = []
    progress = True
    while progress:
        progress = False
        for k, cs in enumerate(stages):
            for s, resource in enumerate(cs.resources):
                while done[k][s] < cs.micro_batches:
                    m = done[k][s]
                    if s > 0 and done[k][s - 1] <= m:
                        break
                    if resource != 0:
                        order = plan.orders[resource]
                        if pos[resource] >= len(order) or order[pos[resource]] != (k, m):
                            break
                    begin = max(ready[k][s][m], free.get(resource, 0.0) if resource else
                                (end[k][s] if m else 0.0))
                    finish = begin + cs.times[s]
                    if resource:
                        free[resource] = finish
                        pos[resource] += 1
                    end[k][s] = finish
                    done[k][s] = m + 1
                    if s + 1 < len(cs.times):
                        ready[k][s + 1][m] = finish
                    name = hids[resource - 1][1:] if resource else (
                        "client" if s == 0 else "link")
                    out.append({"client": ids[k][1:], "stage": s, "resource": name,
                                "micro": m, "start": begin, "end": finish})
                    progress = True
    for k, cs in enumerate(stages):  # the serial head: forward first, backward last
        if cs.lead_ms or cs.trail_ms:
            last = end[k][-1]
            out.append({"client": ids[k][1:], "stage": "head", "resource": "client",
                        "micro": None, "start": 0.0, "end": cs.lead_ms})
            out.append({"client": ids[k][1:], "stage": "head", "resource": "client",
                        "micro": None, "start": last, "end": last + cs.trail_ms})
    return out


def _codec(spelling: str, default: CodecSetting) -> CodecSetting:
    """A reported codec spelling, or ``default`` for ``""``."""
    return parse_codec(spelling) if spelling else default


def _finite(memory_mib: float) -> float:
    return float(memory_mib) if math.isfinite(memory_mib) and memory_mib > 0 else UNLIMITED_MIB
