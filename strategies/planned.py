"""Split learning whose every round is planned from live measurements.

:class:`PlannedSplitStrategy` asks a :class:`~flsplit.server.round_planner.RoundPlanner` each round
which helper serves which client and in what order each helper works, sends that order to
the helpers (they follow it, work-conserving), and after the round feeds the measured
stage times back into the node profiles. Each round it logs the predicted and the
measured makespan and the planning time, and (with ``output_dir``) saves the plan, the
prediction, the measured helper timeline and the round's failures as JSON, plus a Gantt
chart of planned vs measured when asked. A helper that failed is planned out. When the
planner chooses cut pairs (run config ``cut-candidates``) each client gets its own pair,
and the round's pairs are logged and saved.

Under global sampling (``sampler`` ``uniform`` or ``dirichlet``) a round is synchronous
steps instead: the round's schedule is drawn first and the step planner
(:func:`~flsplit.plan.sampling.helper_assignment.assign_helpers`) chooses which helper
batches which clients so that the steps, each as long as its slowest helper, are
shortest, with every helper's share of the round's samples within 20 % of its fair share
(:data:`~flsplit.plan.sampling.helper_assignment.SHARE_TOLERANCE`); the predicted and
measured time per step are logged and saved the same way.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from flsplit.config import CodecSetting, parse_codec
from flsplit.plan.sampling.helper_assignment import (
    SHARE_TOLERANCE,
    SyncAssignment,
    assign_helpers,
    helper_step_times,
    out_of_share,
)
from flsplit.protocol import (
    BACKWARD,
    DATA_PLANE_BYTES,
    FORWARD,
    METRICS,
    ROLE_CLIENT,
    ROLE_HELPER,
    ClientResult,
    HelperResult,
    HelperTask,
)
from flsplit.server.node_profiles import LinkFn
from flsplit.server.round_planner import FIXED_CUT_METHODS, RoundPlan, RoundPlanner
from flsplit.server.steady import steady_kind_ms
from flsplit.server.sync_planning import (
    HelperStepFit,
    fit_round,
    helper_step_durations,
    measured_steps,
    step_costs,
)
from strategies.assignment import round_robin
from strategies.discovery import NodeInfo
from strategies.split import SplitStrategy
from strategies.sync_schedule import SyncSchedule, draw_schedule


class PlannedSplitStrategy(SplitStrategy):
    """A :class:`SplitStrategy` whose assignment and helper order (and, with cut
    candidates, each client's cut pair) come from a planner.

    Parameters
    ----------
    planner : RoundPlanner
        Keeps node profiles and solves each round.
    link : callable, optional
        ``link(client, helper) -> (Mbit/s, latency ms)`` of emulated links, sent to each
        client so it emulates its link to its helper; ``None`` emulates no link.
    batch_size, local_epochs : int
        To count each client's batches per round from its example count.
    output_dir : str or Path, optional
        Where to write ``round-N.json`` (and ``round-N.png`` with ``gantt``).
    gantt : bool
        Also draw planned vs measured helper timelines.
    **kwargs
        Arguments of :class:`SplitStrategy`.
    """

    def __init__(
        self,
        *args: Any,
        planner: RoundPlanner,
        link: LinkFn | None = None,
        batch_size: int = 32,
        local_epochs: int = 1,
        output_dir: str | Path | None = None,
        gantt: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.planner = planner
        self.link = link
        self.batch_size = batch_size
        self.local_epochs = local_epochs
        self.output_dir = Path(output_dir) if output_dir else None
        self.gantt = gantt
        self.round_plan: RoundPlan | None = None
        self.history: list[dict[str, Any]] = []
        self.warm: set[int] = set()  # nodes whose warm-up round is behind them
        #: synchronous steps: the round's planned assignment, its helpers and clients
        #: (in the order of its columns) and the planning seconds
        self.sync_plan: tuple[SyncAssignment, list[int], list[int], float] | None = None
        self._planned_schedule: SyncSchedule | None = None
        #: helper -> its body time per sample (ms) in its last synchronous round
        self.body_sample_ms: dict[int, float] = {}
        #: helper -> its step costs fitted to its measured steps, smoothed over rounds
        self.helper_step_fit: dict[int, HelperStepFit] = {}
        #: the last round's measured steps per helper (saved in ``round-N.json``)
        self._measured_steps: dict[str, dict[str, list[float]]] = {}
        #: synchronous steps: bound on each helper's share of the round's samples
        #: (relative to its fair share; ``None``: the round time alone)
        self.share_tolerance: float | None = SHARE_TOLERANCE

    @classmethod
    def for_model(  # type: ignore[override]
        cls,
        model: Any,
        example_input: Any = None,
        cuts: str | Sequence[str | int] | None = None,
        strategy: Strategy | None = None,
        *,
        planner: str = "auto",
        time_limit: float = 2.0,
        batch_size: int = 32,
        seed: int = 0,
        **kwargs: Any,
    ) -> PlannedSplitStrategy:
        """Build a planned strategy for a ``torch.nn.Module`` cut at ``cuts``, in any
        Flower ``ServerApp``.

        The planner starts from one batch of ``batch_size`` measured through head, body
        and tail on this machine, scaled by each node's reported compute factor, and
        learns every node's real times from the rounds it runs.

        Parameters
        ----------
        model : torch.nn.Module
            The full model.
        example_input : torch.Tensor
            One input batch (its shape without the batch dimension is measured).
        cuts : str or sequence, optional
            Module names or candidate indices; default U-shape if None.
        strategy : Strategy, optional
            The wrapped strategy (default: ``FedAvg()``).
        planner : str
            A planner method of :data:`flsplit.plan.METHODS` (``auto``, ``greedy``, ...).
        time_limit : float
            Seconds of planning per round.
        batch_size : int
            The clients' batch size (to count their batches per round).
        seed : int
            Planner seed.
        **kwargs
            Further arguments of :class:`PlannedSplitStrategy` and :class:`SplitStrategy`
            (``local_epochs``, ``output_dir``, ``round_timeout``, ...).
        """
        from flsplit.model.costs import measure_part_costs
        from flsplit.model.splitting import parse_cuts, split_model

        parts = split_model(model, parse_cuts(cuts), example_input)
        costs = measure_part_costs(model, example_input, parts.cuts, batch_size)
        round_planner = RoundPlanner(
            costs, _unemulated_link, method=planner, time_limit=time_limit, seed=seed
        )
        return cls.from_split(
            parts,
            model,
            example_input,
            strategy=strategy,
            planner=round_planner,
            batch_size=batch_size,
            **kwargs,
        )

    # -- state for checkpoints --------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Round times, node profiles and the plan history (without task timelines and
        measured steps)."""
        history = [
            {
                k: v
                for k, v in entry.items()
                if k
                not in ("predicted_tasks", "measured_tasks", "measured_steps", "predicted_stages")
            }
            for entry in self.history
        ]
        return {**super().state(), "profiles": self.planner.state_dict(), "history": history}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        super().load_state(state)
        self.planner.load_state_dict(state.get("profiles", {}))
        self.history = [dict(entry) for entry in state.get("history", [])]

    # -- discovery --------------------------------------------------------------------

    def discover(self, grid: Any) -> None:
        """Discover nodes and give the planner a profile for every new one, and the
        codecs every node reported (a client's data plane's, a helper's for its next
        hops), which the planner charges from the next plan on."""
        super().discover(grid)
        for node, info in self.nodes.items():
            if info.role == ROLE_HELPER and node not in self.planner.helpers:
                self.planner.add_helper(node, info.compute_factor, info.memory_mib)
            elif info.role == ROLE_CLIENT and node not in self.planner.clients:
                self.planner.add_client(node, info.compute_factor, info.memory_mib)
            self.planner.set_codecs(node, *_reported_codecs(node, info))
        for node in set(self.planner.clients) | set(self.planner.helpers):
            if node not in self.nodes:
                self.planner.drop(node)

    # -- planning hooks ---------------------------------------------------------------

    def assign(self, server_round: int, clients: Sequence[int]) -> dict[int, int]:
        """Solve the round with the planner."""
        if self.sampling.sync:
            return self._assign_sync(server_round, clients)
        batches = {
            c: self.local_epochs * max(1, math.ceil(self.nodes[c].examples / self.batch_size))
            for c in clients
        }
        for c in clients:  # the mean batch is smaller than a full one when the last is
            per_epoch = batches[c] // self.local_epochs
            examples = max(self.nodes[c].examples, 1)
            self.planner.batch_fill[c] = min(examples / (per_epoch * self.batch_size), 1.0)
        helpers = [h for h in self.helpers if h in self.planner.helpers]
        self.round_plan = self.planner.plan(server_round, clients, helpers, batches)
        plan = self.round_plan.plan
        log(
            INFO,
            "round %d plan: %s, predicted makespan %.0f ms (one batch %.0f ms, bound %s), "
            "planning %.3f s, clients per helper %s",
            server_round,
            plan.method,
            self.round_plan.prediction.makespan,
            plan.makespan,
            f"{plan.lower_bound:.0f} ms" if plan.lower_bound is not None else "-",
            self.round_plan.planning_seconds,
            plan.clients_per_helper(),
        )
        if self.round_plan.left_out:
            log(
                WARNING,
                "round %d: clients %s sit this round out: %s",
                server_round,
                self.round_plan.left_out,
                self.round_plan.left_out_reason,
            )
        if self.round_plan.cuts:
            log(
                INFO,
                "round %d cuts: %s",
                server_round,
                json.dumps(self.round_plan.cut_counts()),
            )
        return self.round_plan.helper_of()

    def _assign_sync(self, server_round: int, clients: Sequence[int]) -> dict[int, int]:
        """Draw the round's schedule, then plan which helper batches which clients."""
        helpers = [h for h in self.helpers if h in self.planner.helpers]
        if not helpers:
            raise RuntimeError("no helper left to plan with")
        order = sorted(c for c in clients if c in self.planner.clients)
        schedule = draw_schedule(
            self.sampling, self.nodes, server_round, order, measured=self.sample_ms
        )
        if schedule is None:
            return {}
        last = self.assignment.helper_of if self.assignment is not None else {}
        start = time.perf_counter()
        costs = step_costs(
            self.planner, order, helpers, schedule.counts, self.batch_size,
            client_ms=self.sample_ms, body_ms=self.body_sample_ms, last_helper=last,
            helper_fit=self.helper_step_fit,
        )
        # what the unplanned run would do, judged by the same model: never plan slower
        dealt = round_robin(helpers, server_round, order)
        index = {h: j for j, h in enumerate(helpers)}
        baseline = [index[dealt[c]] for c in order]
        factors = {self.planner.helpers[h].factor for h in helpers}
        unmeasured = not any(h in self.helper_step_fit for h in helpers)
        if self.planner.method in FIXED_CUT_METHODS or (unmeasured and len(factors) == 1):
            # Before any helper's steps are measured, equal helpers are dealt
            # round-robin: the profiles know nothing of a helper's fixed cost per step,
            # and a plan from them alone can be far off (examples/noniid: 2.4 s per step
            # predicted, 0.63 s measured, 19 of 20 clients on one helper).
            # A baseline planner always deals round-robin, with the planned run's
            # emulated links and measurements: what the plan is compared against.
            dealt_to = np.asarray(baseline, dtype=np.int64)
            helper_ms = helper_step_times(schedule.counts, dealt_to, costs).sum(axis=0)
            round_ms = float(helper_ms.max(initial=0.0))
            plan = SyncAssignment(
                dealt_to, helper_ms, greedy_ms=round_ms, baseline_ms=round_ms,
                out_of_share=out_of_share(
                    schedule.counts, dealt_to, len(helpers), self.share_tolerance
                ),
            )
        else:
            # bounded shares: a very uneven split of the samples between the helpers'
            # body copies learns worse (docs/sampling.md)
            plan = assign_helpers(
                schedule.counts, costs, baseline=baseline, share_tolerance=self.share_tolerance
            )
        seconds = time.perf_counter() - start
        self._planned_schedule = schedule
        self.sync_plan = (plan, helpers, order, seconds)
        helper_of = {c: helpers[int(plan.helper[i])] for i, c in enumerate(order)}
        per_helper = Counter(helper_of.values())
        steps = max(schedule.counts.shape[0], 1)
        log(
            INFO,
            "round %d step plan: %d steps, predicted %.1f ms per step (greedy %.1f, "
            "round-robin %s), planning %.3f s, clients per helper %s",
            server_round,
            schedule.counts.shape[0],
            plan.round_ms / steps,
            plan.greedy_ms / steps,
            f"{plan.baseline_ms / steps:.1f}" if plan.baseline_ms is not None else "-",
            seconds,
            {str(h): per_helper.get(h, 0) for h in helpers},
        )
        return helper_of

    def _sync_schedule(self, server_round: int, clients: Sequence[int]) -> SyncSchedule | None:
        """The schedule the step plan was made for (drawn again if the clients changed)."""
        schedule, self._planned_schedule = self._planned_schedule, None
        if schedule is not None and sorted(schedule.column) == sorted(clients):
            self.schedules[server_round] = schedule.counts
            return schedule
        return super()._sync_schedule(server_round, clients)

    def client_cuts(self, server_round: int, clients: Sequence[int]) -> dict[int, str]:
        """Each client's planned cut pair (the default pair when the plan has none)."""
        planned = self.round_plan.cuts_of() if self.round_plan else {}
        return {c: planned.get(c, self.cuts) for c in clients}

    def helper_order(self, helper: int, clients: Sequence[int]) -> list[HelperTask]:
        """The planned priority order of ``helper``'s tasks."""
        return self.round_plan.order_of(helper) if self.round_plan else []

    def client_link(self, client: int, helper: int) -> tuple[float, float] | None:
        """The emulated link of the client to its helper, if links are emulated."""
        if self.link is None:
            return None
        rate, latency = self.link(client, helper)
        return float(rate), float(latency)

    # -- measurements -----------------------------------------------------------------

    def _plan_out_failed_helpers(self, server_round: int) -> list:
        """Drop the round's failed helpers from the planner and the nodes; return the
        round's failures."""
        failures = self.failures.get(server_round, [])
        for failure in failures:
            if failure.role == ROLE_HELPER:
                log(WARNING, "helper %d is planned out from now on", failure.node)
                self.planner.drop(failure.node)
                self.nodes.pop(failure.node, None)
        return failures

    def observe(
        self,
        server_round: int,
        client_replies: Sequence[Message],
        helper_replies: Sequence[Message],
    ) -> None:
        """Update profiles, compare predicted and measured makespan, save the round."""
        if self.sampling.sync:
            self._observe_sync(server_round, client_replies, helper_replies)
            return
        assignment = self.assignment
        round_plan = self.round_plan
        if assignment is None or round_plan is None:
            return
        answered = {r.metadata.src_node_id for r in helper_replies}
        failures = self._plan_out_failed_helpers(server_round)
        spans: dict[int, tuple[float, float]] = {}
        stages: dict[int, tuple[float, float, float]] = {}
        loads: dict[int, float] = {}
        measured: dict[int, ClientResult] = {}
        for reply in client_replies:
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            result = ClientResult.from_metrics(reply.content.metric_records[METRICS])
            if result is None or node not in assignment.helper_of:
                continue
            spans[node] = (float(result.started), float(result.ended))
            stages[node] = (
                float(result.stage1_ms),
                float(result.stage3_ms),
                float(result.stage5_ms),
            )
            loads[node] = float(result.load_ms)
            measured[node] = result
        first_start = min((a for a, _ in spans.values()), default=0.0)
        cuts_of = assignment.cuts_of
        # A node's first round includes starting its process (imports, model tracing,
        # first-call allocations), which later rounds do not repeat: it is a warm-up. The
        # times it reports are steady-state means (its first batch, the time before it and
        # a helper's first task per client and kind left out), yet the round ran on a
        # machine busy with the other nodes' start-up: they are used for the next round
        # only and then replaced, not averaged in; its start offset is not learned.
        warming = {n for n in [*stages, *answered] if n not in self.warm}
        self.warm |= warming
        if warming:
            log(INFO, "round %d: warm-up round of %d nodes, learned provisionally",
                server_round, len(warming))
        for node, (s1, s3, s5) in stages.items():
            offset = 1000.0 * (spans[node][0] - first_start) if node not in warming else 0.0
            self.planner.observe_client(
                node, assignment.helper_of[node], s1, s3, s5, offset, cuts=cuts_of.get(node),
                load_ms=loads[node],
            )
            if node in warming:
                self.planner.mark_provisional(node)
        starts = [a for a, _ in spans.values()]
        ends = [b for _, b in spans.values()]
        timeline = []
        for reply in helper_replies:
            node = reply.metadata.src_node_id
            result = HelperResult.from_content(reply.content)
            # the history's task records (round-N.json)
            tasks = [
                {
                    "helper": node,
                    "client": int(span.client),
                    "kind": span.kind,
                    "start": span.start,
                    "end": span.end,
                }
                for span in result.timeline
            ]
            timeline.extend(tasks)
            if result.timeline and node in self.planner.helpers:
                served = Counter(
                    cuts_of.get(int(span.client), self.cuts)
                    for span in result.timeline
                    if span.kind == FORWARD
                )
                steady = steady_kind_ms(result.timeline)
                self.planner.observe_helper(
                    node,
                    steady.get(FORWARD, result.body_fwd_ms),
                    steady.get(BACKWARD, result.body_bwd_ms),
                    served=dict(served),
                )
                if node in warming:
                    self.planner.mark_provisional(node)
        predicted_ms = round_plan.prediction.makespan
        # No client finished: nothing to measure, but the round is saved (its failures)
        origin = min(starts, default=None)
        measured_ms = (max(ends) - origin) * 1000.0 if origin is not None else None
        if measured_ms is None:
            log(
                WARNING,
                "round %d: predicted makespan %.0f ms, nothing measured (no client "
                "finished), planning %.3f s",
                server_round,
                predicted_ms,
                round_plan.planning_seconds,
            )
        else:
            error = (predicted_ms - measured_ms) / measured_ms if measured_ms > 0 else math.nan
            log(
                INFO,
                "round %d: predicted makespan %.0f ms, measured %.0f ms (%+.1f%%), "
                "planning %.3f s",
                server_round,
                predicted_ms,
                measured_ms,
                100 * error,
                round_plan.planning_seconds,
            )
        entry = {
            "round": server_round,
            "method": round_plan.plan.method,
            "predicted_ms": predicted_ms,
            "measured_ms": measured_ms,
            "planning_s": round_plan.planning_seconds,
            "clients_per_helper": round_plan.plan.clients_per_helper(),
            "cuts": {str(node): pair for node, pair in round_plan.cuts_of().items()},
            "cut_counts": round_plan.cut_counts(),
            "plan": round_plan.plan.to_dict(),
            "node_ids": round_plan.node_ids,
            "batches": round_plan.batches,
            "client_load_ms": {str(node): load for node, load in loads.items()},
            "client_stages_ms": _client_stages(round_plan, measured, self.planner.link),
            DATA_PLANE_BYTES: {
                str(node): moved for node, moved in self.data_bytes.get(server_round, {}).items()
            },
            "client_spans_ms": {
                str(node): [1000 * (a - origin), 1000 * (b - origin)]
                for node, (a, b) in spans.items()
            },
            "predicted_finish_ms": round_plan.prediction.finish,
            "predicted_tasks": [vars(t) for t in round_plan.prediction.tasks],
            "measured_tasks": [
                {**t, "start": 1000 * (t["start"] - origin), "end": 1000 * (t["end"] - origin)}
                for t in timeline
            ]
            if origin is not None
            else [],
            "failures": [failure.to_dict() for failure in failures],
        }
        self._save(server_round, entry)
        if self.output_dir is not None and self.gantt and measured_ms is not None:
            from flsplit.plan.scheduling.gantt_rounds import planned_vs_measured

            planned_vs_measured(entry, self.output_dir / f"round-{server_round}.png")


    def _fit_helper_steps(
        self,
        server_round: int,
        counts: Any,
        plan: SyncAssignment,
        helpers: list[int],
        order: list[int],
        durations: Mapping[int, Mapping[int, float]],
    ) -> dict[str, float]:
        """Fit each helper's step costs to its measured steps (this round's client times
        taken out), smooth them into :attr:`helper_step_fit`; return each helper's
        measured time of its steps (ms, the first one left out)."""
        self._measured_steps = {}
        if counts.shape[1] != len(order):  # the round ran on a schedule drawn anew
            return {}
        helper_of = {c: helpers[int(plan.helper[i])] for i, c in enumerate(order)}
        index = {h: j for j, h in enumerate(helpers)}
        costs = step_costs(
            self.planner, order, helpers, counts, self.batch_size,
            client_ms=self.sample_ms, body_ms=self.body_sample_ms, last_helper=helper_of,
        )
        rows = measured_steps(
            counts, plan.helper, costs,
            {index[h]: d for h, d in durations.items() if h in index},
        )
        self._measured_steps = {
            str(helpers[j]): {
                key: r[:, i].tolist()
                for i, key in enumerate(("step", "ms", "clients", "samples", "wait_ms"))
            }
            for j, r in rows.items()
        }
        fits = fit_round(
            counts, plan.helper, costs,
            {index[h]: d for h, d in durations.items() if h in index},
        )
        smoothing = self.planner.smoothing
        for j, fit in fits.items():
            h = helpers[j]
            self.helper_step_fit[h] = fit.blend(self.helper_step_fit.get(h), smoothing)
            log(
                INFO,
                "round %d: helper %d steps: %.1f ms + %.1f ms per client + %.3f ms per sample "
                "+ %.2f x the predicted wait for the slowest client (%d steps fitted)",
                server_round, h, fit.step_ms, fit.participant_ms, fit.sample_ms,
                fit.wait_scale, fit.steps,
            )
        return {str(h): float(sum(d.values())) for h, d in durations.items()}

    def _save(self, server_round: int, entry: dict[str, Any]) -> None:
        """Keep the round's entry in :attr:`history` and write ``round-N.json``."""
        self.history.append(entry)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / f"round-{server_round}.json"
            path.write_text(json.dumps(entry, indent=1, default=float))

    def _observe_sync(
        self,
        server_round: int,
        client_replies: Sequence[Message],
        helper_replies: Sequence[Message],
    ) -> None:
        """Learn each helper's body time per sample (the clients' per-sample times are
        kept by :class:`SplitStrategy`) and, from its step timeline, its fixed costs per
        step and per participant; compare predicted and measured time per step."""
        failures = self._plan_out_failed_helpers(server_round)
        durations: dict[int, dict[int, float]] = {}
        for reply in helper_replies:
            if reply.has_error():
                continue
            result = HelperResult.from_content(reply.content)
            samples = sum(result.step_examples or [])
            if samples > 0 and result.busy_seconds > 0:
                self.body_sample_ms[reply.metadata.src_node_id] = (
                    1000.0 * result.busy_seconds / samples
                )
            durations[reply.metadata.src_node_id] = helper_step_durations(result.timeline)
        planned, self.sync_plan = self.sync_plan, None
        counts = self.schedules.get(server_round)
        if planned is None or counts is None:
            return
        plan, helpers, order, seconds = planned
        measured_helper_ms = self._fit_helper_steps(
            server_round, counts, plan, helpers, order, durations
        )
        spans = []
        for reply in client_replies:
            if reply.has_error() or METRICS not in reply.content.metric_records:
                continue
            result = ClientResult.from_metrics(reply.content.metric_records[METRICS])
            if result is not None and result.ended > result.started:
                spans.append((float(result.started), float(result.ended)))
        steps = max(int(counts.shape[0]), 1)
        predicted_step = plan.round_ms / steps
        measured_step = None
        if spans:
            measured_step = 1000.0 * (max(b for _, b in spans) - min(a for a, _ in spans)) / steps
            log(
                INFO,
                "round %d: predicted %.1f ms per synchronous step, measured %.1f ms",
                server_round,
                predicted_step,
                measured_step,
            )
        helper_of = {c: helpers[int(plan.helper[i])] for i, c in enumerate(order)}
        self._save(server_round, {
            "round": server_round,
            "method": "sync-steps",
            "steps": steps,
            "predicted_step_ms": predicted_step,
            "measured_step_ms": measured_step,
            "predicted_ms": plan.round_ms,
            "measured_ms": measured_step * steps if measured_step is not None else None,
            "planning_s": seconds,
            "round_robin_predicted_ms": plan.baseline_ms,
            "out_of_share": plan.out_of_share,
            "predicted_helper_ms": {
                str(h): float(plan.helper_ms[j]) for j, h in enumerate(helpers)
            },
            "measured_helper_ms": measured_helper_ms,
            "helper_step_fit": {
                str(h): {"step_ms": f.step_ms, "participant_ms": f.participant_ms,
                         "sample_ms": f.sample_ms, "wait_scale": f.wait_scale,
                         "steps": f.steps}
                for h, f in self.helper_step_fit.items()
            },
            "measured_steps": self._measured_steps,
            "clients_per_helper": dict(Counter(str(h) for h in helper_of.values())),
            "helper_of": {str(c): h for c, h in helper_of.items()},
            "failures": [failure.to_dict() for failure in failures],
        })


def _client_stages(
    round_plan: RoundPlan, measured: Mapping[int, ClientResult], link: LinkFn
) -> dict[str, dict[str, float]]:
    """Client -> its one-batch stage times as planned (at its planned helper) and as it
    measured them (steady-state means per batch): what ``round-N.json`` shows to tell a
    wrong stage time from a wrong schedule."""
    instance, plan = round_plan.instance, round_plan.plan
    rows = {c: i for i, c in enumerate(instance.client_ids)}
    cols = {h: j for j, h in enumerate(instance.helper_ids)}
    out: dict[str, dict[str, float]] = {}
    for node, result in measured.items():
        name = f"c{node}"
        helper = plan.assignment.get(name)
        if name not in rows or helper not in cols:
            continue
        i, j = rows[name], cols[helper]
        out[str(node)] = {
            "link_mbps": float(link(node, round_plan.node_ids[helper])[0]),
            "stage1": float(instance.head_fwd_up[i, j]),
            "body_fwd": float(instance.body_fwd[i, j]),
            "stage3": float(instance.tail_fwd_bwd[i, j]),
            "body_bwd": float(instance.body_bwd[i, j]),
            "stage5": float(instance.down_head_bwd[i, j]),
            "measured_stage1": float(result.stage1_ms) + float(result.load_ms),
            "measured_stage3": float(result.stage3_ms),
            "measured_stage5": float(result.stage5_ms),
            "measured_service": float(result.helper_service_ms),
            "measured_batch": float(result.steady_batch_ms),
        }
    return out


def _reported_codecs(node: int, info: NodeInfo) -> tuple[CodecSetting | None, ...]:
    """The codecs a node's discovery reply names (``None`` where it names none, or a
    spelling this server does not read: logged, and planned as the run config's)."""
    codecs: list[CodecSetting | None] = []
    for spelling in info.codecs:
        try:
            codecs.append(None if spelling is None else parse_codec(spelling))
        except ValueError as exc:
            log(WARNING, "node %s reported codec %r, planned as the run config's: %s",
                node, spelling, exc)
            codecs.append(None)
    return tuple(codecs)


def _unemulated_link(client: int, helper: int) -> tuple[float, float]:
    """Links are not emulated: the planner learns their real times from the rounds."""
    return 0.0, 0.0
