"""Split learning whose helper chains are planned every round from live measurements.

:class:`ChainPlannedSplitStrategy` asks a
:class:`~flsplit.server.chain_planning.ChainRoundPlanner` each round for every client's
route (its helpers, in order; one hop where a chain does not pay), its cuts (outer and
inner), its micro-batch count and each helper's task order; sends each client its cuts,
first helper and micro-batch count and each helper the pieces it runs with the next hop;
and after the round learns every node's speed from what it measured, logs the predicted
against the measured makespan and (with ``output_dir``) saves ``round-N.json`` with every
hop, planned and measured (and ``round-N.png`` with ``gantt``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from logging import INFO, WARNING
from typing import Any

from flwr.app import Message
from flwr.supercore import log

from flsplit.protocol import METRICS, ClientResult, HelperResult, HelperTask
from flsplit.server.chain_planning import ChainRoundPlan, stage_timeline
from flsplit.server.steady import steady_busy_ms
from strategies.planned import PlannedSplitStrategy


class ChainPlannedSplitStrategy(PlannedSplitStrategy):
    """A :class:`PlannedSplitStrategy` whose planner plans helper chains
    (:class:`~flsplit.server.chain_planning.ChainRoundPlanner` as ``planner``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chain_plan: ChainRoundPlan | None = None

    # -- planning hooks ---------------------------------------------------------------

    def _chains(self, server_round: int, clients: Sequence[int]) -> dict[int, list[int]]:
        """Plan the round's chains (the clients nothing fits sit it out)."""
        batches = {
            c: self.local_epochs * max(1, math.ceil(self.nodes[c].examples / self.batch_size))
            for c in clients
        }
        helpers = sorted(
            (h for h in self.helpers if h in self.planner.helpers),
            key=lambda h: self.nodes[h].index,
        )
        plan = self.chain_plan = self.planner.plan(server_round, clients, helpers, batches)
        hops = sorted(len(r) for r in plan.routes.values())
        log(
            INFO,
            "round %d chain plan: %s, predicted makespan %.0f ms (one batch %.0f ms), "
            "planning %.3f s, hops per client %s, micro-batches %s",
            server_round,
            plan.plan.method,
            plan.predicted_ms,
            plan.plan.makespan or 0.0,
            plan.planning_seconds,
            {str(n): hops.count(n) for n in sorted(set(hops))},
            sorted(set(plan.micro_batches.values())),
        )
        if plan.left_out:
            log(WARNING, "round %d: clients %s sit this round out: %s", server_round,
                plan.left_out, plan.left_out_reason)
        return {c: list(r) for c, r in plan.routes.items()}

    def client_cuts(self, server_round: int, clients: Sequence[int]) -> dict[int, str]:
        """Each client's planned cuts (outer and inner)."""
        planned = self.chain_plan.cuts if self.chain_plan else {}
        return {c: planned.get(c, self.cuts) for c in clients}

    def client_micro_batches(self, server_round: int, clients: Sequence[int]) -> dict[int, int]:
        """Each client's planned micro-batch count."""
        planned = self.chain_plan.micro_batches if self.chain_plan else {}
        return {c: planned[c] for c in clients if c in planned}

    def helper_order(self, helper: int, clients: Sequence[int]) -> list[HelperTask]:
        """The planned priority order of ``helper``'s tasks."""
        return self.chain_plan.order_of(helper) if self.chain_plan else []

    # -- measurements -----------------------------------------------------------------

    def observe(
        self,
        server_round: int,
        client_replies: Sequence[Message],
        helper_replies: Sequence[Message],
    ) -> None:
        """Learn node speeds, compare predicted and measured makespan, save the round."""
        plan = self.chain_plan
        if plan is None or self.assignment is None:
            return
        failures = self._plan_out_failed_helpers(server_round)
        spans: dict[int, tuple[float, float]] = {}
        results: dict[int, ClientResult] = {}
        for reply in client_replies:
            if reply.has_error() or METRICS not in reply.content.metric_records:
                continue
            node = reply.metadata.src_node_id
            result = ClientResult.from_metrics(reply.content.metric_records[METRICS])
            if result is None or node not in plan.routes:
                continue
            spans[node] = (float(result.started), float(result.ended))
            results[node] = result
        # A node's first round includes starting its process: its times are learned
        # provisionally (the next round's replace them) and its start offset not at all.
        warming = ({*spans, *(r.metadata.src_node_id for r in helper_replies)}
                   - self.warm)
        self.warm |= warming
        first = min((a for a, _ in spans.values()), default=0.0)
        for node, result in results.items():
            compute = result.stage1_ms + result.stage3_ms + result.stage5_ms
            if plan.micro_batches.get(node, 1) == 1:
                # whole batches: the stages are the client's compute plus its transfers
                # (micro-batches: head, tail and head backward only, sent by other threads)
                compute -= self._transfer_ms(node, plan)
            offset = None if node in warming else 1000.0 * (spans[node][0] - first)
            # the steady state's time per batch (the first batch and the set-up before it
            # left out) for every batch; a client that does not report it: its span
            whole = 1000.0 * (spans[node][1] - spans[node][0])
            span = (result.steady_batch_ms * plan.batches.get(node, 1)
                    if result.steady_batch_ms > 0 else whole)
            # the round's first batch beyond a steady one: set-up every round repeats
            # (the helpers' body copies and optimizers), a process's first round more
            setup = (whole - span if result.steady_batch_ms > 0 and node not in warming
                     else None)
            self.planner.observe_client(node, plan, compute, offset, span, setup)
            if node in warming:
                self.planner.mark_provisional(node)
        timeline = []
        for reply in helper_replies:
            if reply.has_error():
                continue
            node = reply.metadata.src_node_id
            result = HelperResult.from_content(reply.content)
            for span in result.timeline:
                timeline.append({"helper": node, "client": int(span.client),
                                 "kind": span.kind, "start": span.start, "end": span.end})
            # every task at its client's and kind's steady mean (first task left out)
            self.planner.observe_helper(node, plan, steady_busy_ms(result.timeline))
            if node in warming:
                self.planner.mark_provisional(node)
        origin = min((a for a, _ in spans.values()), default=None)
        measured = (max(b for _, b in spans.values()) - origin) * 1000.0 if spans else None
        if measured is None:
            log(WARNING, "round %d: predicted makespan %.0f ms, nothing measured (no client "
                "finished)", server_round, plan.predicted_ms)
        else:
            log(INFO, "round %d: predicted makespan %.0f ms, measured %.0f ms (%+.1f%%), "
                "planning %.3f s", server_round, plan.predicted_ms, measured,
                100 * (plan.predicted_ms - measured) / measured if measured > 0 else math.nan,
                plan.planning_seconds)
        entry = {
            "round": server_round,
            "method": plan.plan.method,
            "predicted_ms": plan.predicted_ms,
            "measured_ms": measured,
            "planning_s": plan.planning_seconds,
            "chains": plan.to_dict(),
            "batches": {str(c): n for c, n in plan.batches.items()},
            "predicted_finish_ms": {str(c): f for c, f in plan.finish_ms.items()},
            "predicted_stages": stage_timeline(plan.problem, plan.plan),
            "client_spans_ms": {
                str(n): [1000 * (a - origin), 1000 * (b - origin)]
                for n, (a, b) in spans.items()
            } if origin is not None else {},
            "measured_tasks": [
                {**t, "start": 1000 * (t["start"] - origin), "end": 1000 * (t["end"] - origin)}
                for t in timeline
            ] if origin is not None else [],
            # what each client measured (means per batch, steady state): the data the
            # planner learns from, kept to check its model against
            "client_measured_ms": {
                str(n): {"stage1": r.stage1_ms, "stage3": r.stage3_ms, "stage5": r.stage5_ms,
                         "load": r.load_ms, "helper_service": r.helper_service_ms,
                         "steady_batch": r.steady_batch_ms}
                for n, r in results.items()
            },
            "left_out": plan.left_out,
            "failures": [failure.to_dict() for failure in failures],
        }
        self._save(server_round, entry)
        if self.output_dir is not None and self.gantt and measured is not None:
            from flsplit.plan.multihop.chain_gantt import chain_round_gantt

            chain_round_gantt(entry, self.output_dir / f"round-{server_round}.png")

    def _transfer_ms(self, client: int, plan: ChainRoundPlan) -> float:
        """The link time of one batch of ``client`` to and from its chain, as planned:
        the bytes its codecs send (activations one way, gradients the other)."""
        route = plan.routes[client]
        rate, latency = self.planner.link(client, route[0])
        q = plan.positions[client]
        activation = self.planner.costs.profile.activation_kib
        nbytes = 1024.0 * float(activation[q[0] - 1] + activation[q[-1] - 1])
        coded = 2 * nbytes * self.planner.hop_byte_ratio(client)
        seconds = coded * 8.0 / (rate * 1e6) if rate > 0 else 0.0
        return 4 * latency + 1000.0 * seconds
