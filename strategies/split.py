"""Split learning with helper nodes as a Flower Message-API strategy.

:class:`SplitStrategy` wraps any Flower strategy (FedAvg by default). The wrapped
strategy samples clients and aggregates; this one discovers which nodes are helpers,
cuts the model, assigns clients to helpers, and turns each round into

- ``train.split`` messages to clients: head and tail weights, cut points, helper address,
  round token, the wrapped strategy's config;
- ``train.helper`` messages to helpers: body weights, clients served, the key to check
  their tokens with (:mod:`flsplit.runtime.auth`), the helper's task order;

then assembles one full-model update per client (its head and tail plus the body its
helper trained for it) and hands those to the wrapped strategy's ``aggregate_train``.

Global sampling (``sampling`` with ``sampler`` ``uniform`` or ``dirichlet``): the round
runs as synchronous steps (:mod:`flsplit.runtime.syncplane`). The strategy draws the
round's schedule from the clients' example counts (known from discovery; per-sample
costs from their reported compute factors), sends each client its column
(``schedule-shape`` / ``schedule-counts``) and where its draws continue
(``sample-offset``), and each helper the columns of its clients in the order it
concatenates them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore import log

from flsplit.plan.sampling import (
    check_sync_config,
    pack_schedule,
    round_schedule,
    sampler_from_config,
)
from flsplit.runtime.auth import helper_key, new_run_secret, sign_token

QUERY = "query.split"
CLIENT_TRAIN = "train.split"
HELPER_TRAIN = "train.helper"


class NodeGrid:
    """A view of a :class:`Grid` that exposes only some of its nodes.

    The wrapped strategy samples through it, so it only ever sees clients.
    """

    def __init__(self, grid: Grid, node_ids: Callable[[], Iterable[int]]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        """Return the ids of the visible nodes that are still connected."""
        connected = set(self._grid.get_node_ids())
        return [n for n in self._node_ids() if n in connected]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class NodeInfo:
    """What a node reported about itself at discovery."""

    node_id: int
    role: str
    examples: int = 0
    address: str = ""
    listen_address: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundAssignment:
    """Who serves whom in one round."""

    helper_of: dict[int, int]
    tokens: dict[int, str]
    started: float
    cuts_of: dict[int, str] = field(default_factory=dict)


class SplitStrategy(Strategy):
    """Parallel split learning with helper nodes around any Flower strategy.

    Parameters
    ----------
    part_keys : callable
        ``part_keys(cuts)`` returns the ``state_dict`` keys of head, body and tail for a
        cut pair such as ``"conv2,fc2"`` (e.g. from :func:`flsplit.split.part_state_keys`).
    cuts : str
        The default cut points, as sent to the nodes (comma-separated module names);
        :meth:`client_cuts` may choose others per client.
    strategy : Strategy, optional
        The strategy that samples clients and aggregates full-model updates
        (default: ``FedAvg()``).
    round_timeout : float
        Seconds a helper waits for its clients in a round.
    query_timeout : float
        Seconds to wait for discovery replies.
    split : bool
        ``False`` runs plain federated training of the full model on the clients
        (helpers idle), for comparison with the same data and aggregation.
    min_completed_clients : int
        Fewest complete client updates (head, tail and the body from the helper) a round
        needs to be aggregated; below that the global model stays as it was.
    round_offset : int
        Rounds already completed before this run (a resumed run): Flower's round ``r``
        is flsplit's round ``r + round_offset`` in messages, logs and plans.
    on_round_end : callable, optional
        ``on_round_end(server_round, arrays, strategy)`` after every round's aggregation
        (e.g. to write a checkpoint).
    sampling : Mapping, optional
        Run-config keys of global sampling (``sampler``, ``global-batch-size``, ...,
        checked by :func:`flsplit.plan.sampling.check_sync_config`); ``None`` or
        ``sampler="local"``: every client trains on its own local batches.
    """

    def __init__(
        self,
        part_keys: Callable[[str], Sequence[Sequence[str]]],
        cuts: str,
        strategy: Strategy | None = None,
        round_timeout: float = 600.0,
        query_timeout: float = 120.0,
        split: bool = True,
        min_completed_clients: int = 1,
        round_offset: int = 0,
        on_round_end: Callable[[int, ArrayRecord, SplitStrategy], None] | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> None:
        self.sampling = check_sync_config(sampling or {})
        #: round -> helper -> samples of each synchronous step the helper ran
        self.sync_steps: dict[int, dict[int, list[int]]] = {}
        self.schedules: dict[int, Any] = {}  # round -> (steps, clients) counts
        if min_completed_clients < 1:
            raise ValueError(
                f"min_completed_clients={min_completed_clients} must be at least 1"
            )
        self._part_keys_fn = part_keys
        self._part_keys: dict[str, tuple[list[str], list[str], list[str]]] = {}
        self.cuts = cuts
        self.head_keys, self.body_keys, self.tail_keys = self.part_keys(cuts)
        self.full_keys = self.head_keys + self.body_keys + self.tail_keys
        self.strategy = strategy if strategy is not None else FedAvg()
        self.round_timeout = round_timeout
        self.query_timeout = query_timeout
        self.split = split
        self.min_completed_clients = min_completed_clients
        self.round_offset = round_offset
        self.on_round_end = on_round_end
        self.nodes: dict[int, NodeInfo] = {}
        self.assignment: RoundAssignment | None = None
        self.round_times: dict[int, float] = {}
        self.helper_peak_mib: dict[int, float] = {}  # peak resident memory per helper
        self._known_ids: frozenset[int] = frozenset()
        self._run_secret: tuple[int, bytes] | None = None  # (run id, secret), never sent

    @classmethod
    def for_model(
        cls,
        model: Any,
        example_input: Any = None,
        cuts: str | Sequence[str | int] | None = None,
        strategy: Strategy | None = None,
        **kwargs: Any,
    ) -> SplitStrategy:
        """Build the strategy for a ``torch.nn.Module`` cut at ``cuts``.

        Parameters
        ----------
        model : torch.nn.Module
            The full model (only its structure and ``state_dict`` keys are used).
        example_input : torch.Tensor, optional
            One input batch, to check the cuts on real shapes.
        cuts : str or sequence, optional
            Module names or candidate indices (``"conv2,fc3"``); default U-shape if None.
        strategy : Strategy, optional
            The wrapped strategy (default: ``FedAvg()``).
        **kwargs
            Further arguments of :class:`SplitStrategy`.
        """
        from flsplit.split import split_model
        from flsplit.task import parse_cuts

        parts = split_model(model, parse_cuts(cuts), example_input)
        return cls.from_split(parts, model, example_input, strategy=strategy, **kwargs)

    @classmethod
    def from_split(
        cls, parts: Any, model: Any = None, example_input: Any = None, **kwargs: Any
    ) -> SplitStrategy:
        """Build the strategy from a :class:`flsplit.split.SplitModel` (and, for other
        cut pairs than its own, the model it came from)."""
        from flsplit.split import part_state_keys
        from flsplit.task import parse_cuts

        own = ",".join(parts.cuts)
        own_keys = [parts.part_keys(i) for i in range(len(parts.parts))]

        def keys_for(cuts: str) -> Sequence[Sequence[str]]:
            if cuts == own:
                return own_keys
            if model is None:
                raise ValueError(f"cuts {cuts!r} differ from {own!r} and no model was given")
            return part_state_keys(model, parse_cuts(cuts), example_input)

        return cls(part_keys=keys_for, cuts=own, **kwargs)

    def part_keys(self, cuts: str) -> tuple[list[str], list[str], list[str]]:
        """Head, body and tail ``state_dict`` keys for the cut pair ``cuts`` (cached)."""
        if cuts not in self._part_keys:
            parts = [list(k) for k in self._part_keys_fn(cuts)]
            if len(parts) != 3:
                raise ValueError(
                    f"cuts {cuts!r} give {len(parts)} parts; one-hop split learning needs "
                    "head, body and tail"
                )
            self._part_keys[cuts] = (parts[0], parts[1], parts[2])
        return self._part_keys[cuts]

    # -- roles ------------------------------------------------------------------------

    @property
    def helpers(self) -> list[int]:
        """Ids of the known helper nodes."""
        return sorted(n for n, info in self.nodes.items() if info.role == "helper")

    @property
    def clients(self) -> list[int]:
        """Ids of the known client nodes."""
        return sorted(n for n, info in self.nodes.items() if info.role == "client")

    def discover(self, grid: Grid) -> None:
        """Query nodes not seen yet for role, examples and data-plane address.

        A node that does not answer in time (still starting, say) is asked again at the
        next call.
        """
        node_ids = sorted(grid.get_node_ids())
        if frozenset(node_ids) == self._known_ids:
            return
        new = [n for n in node_ids if n not in self.nodes]
        for gone in set(self.nodes) - set(node_ids):
            log(WARNING, "node %d left; it is planned out", gone)
            del self.nodes[gone]
        if new:
            messages = [
                Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=QUERY)
                for n in new
            ]
            for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
                src = reply.metadata.src_node_id
                if reply.has_error():
                    log(WARNING, "node %d failed discovery: %s", src, reply.error.reason)
                    continue
                info = dict(reply.content.config_records["info"])
                examples = int(reply.content.metric_records["metrics"]["num-examples"])
                self.nodes[src] = NodeInfo(
                    node_id=src,
                    role=str(info["role"]),
                    examples=examples,
                    address=str(info.get("address", "")),
                    listen_address=str(info.get("listen-address", "")),
                    info=info,
                )
        unanswered = sorted(set(new) - set(self.nodes))
        if unanswered:
            log(
                WARNING,
                "%d nodes did not answer discovery within %.0f s; asking them again later",
                len(unanswered),
                self.query_timeout,
            )
        self._known_ids = frozenset(node_ids) - frozenset(unanswered)
        self._check_concurrency()
        log(
            INFO,
            "discovery: %d clients, %d helpers (%s)",
            len(self.clients),
            len(self.helpers),
            ", ".join(f"{h}@{self.nodes[h].address}" for h in self.helpers),
        )

    def wait_for_clients(self, grid: Grid, stage: str = "train") -> None:
        """Discover until the wrapped strategy has the clients it needs, within a deadline.

        The wrapped strategy would otherwise wait for them forever (it only sees clients
        that answered discovery).

        Parameters
        ----------
        grid : Grid
            The run's grid.
        stage : str
            ``"train"`` or ``"evaluate"``: which of the wrapped strategy's minimums
            (``min_train_nodes`` or ``min_evaluate_nodes``) counts besides
            ``min_available_nodes``.

        Raises
        ------
        RuntimeError
            If fewer clients than those minimums answered within ``query_timeout``
            seconds.
        """
        if stage == "evaluate" and getattr(self.strategy, "fraction_evaluate", 1.0) == 0:
            self.discover(grid)  # no federated evaluation: nobody to wait for
            return
        needed = max(
            1,
            int(getattr(self.strategy, "min_available_nodes", 1)),
            int(getattr(self.strategy, f"min_{stage}_nodes", 1)),
        )
        deadline = time.monotonic() + self.query_timeout
        self.discover(grid)
        while len(self.client_grid(grid).get_node_ids()) < needed:
            if time.monotonic() > deadline:
                message = (
                    f"{len(self.clients)} client nodes (and {len(self.helpers)} helpers) "
                    f"answered discovery within {self.query_timeout:.0f} s, but the wrapped "
                    f"strategy needs at least {needed} clients (its min_available_nodes / "
                    f"min_{stage}_nodes): start more client SuperNodes, lower those minimums, "
                    "or give the nodes more time (query_timeout)"
                )
                log(ERROR, message)
                raise RuntimeError(message)
            time.sleep(1.0)
            self.discover(grid)

    def _check_concurrency(self) -> None:
        """Refuse a simulation whose backend cannot run every helper and a client at once."""
        if not self.split:
            return
        reported = [
            int(n.info["simulation-concurrency"])
            for n in self.nodes.values()
            if "simulation-concurrency" in n.info
        ]
        needed = len(self.helpers) + 1
        if reported and min(reported) < needed:
            message = (
                f"the simulation backend runs {min(reported)} ClientApp calls at once, but "
                f"{len(self.helpers)} helpers (each busy for the whole round) plus at least "
                "one client must run together: give each virtual node a smaller CPU share, "
                "e.g. flwr run --federation-config 'client-resources-num-cpus=1 "
                "init-args-num-cpus=<num-supernodes>'; Flower's simulation engine itself "
                "runs at most min(32, cpus + 4) calls at once, a limit `flsplit simulate` "
                "lifts"
            )
            log(ERROR, message)
            raise RuntimeError(message)

    def client_grid(self, grid: Grid) -> NodeGrid:
        """The grid as the wrapped strategy sees it: clients only."""
        return NodeGrid(grid, lambda: self.clients)

    # -- planning ---------------------------------------------------------------------

    def assign(self, server_round: int, clients: Sequence[int]) -> dict[int, int]:
        """Assign clients to helpers (round-robin over the known helpers)."""
        helpers = self.helpers
        if not helpers:
            raise RuntimeError(
                "no helper node found: in simulation set the run config num-helpers >= 1 "
                "(and num-supernodes > num-helpers); in deployment start a SuperNode with "
                "--node-config 'role=\"helper\"'"
            )
        offset = server_round - 1
        return {c: helpers[(i + offset) % len(helpers)] for i, c in enumerate(sorted(clients))}

    def client_cuts(self, server_round: int, clients: Sequence[int]) -> dict[int, str]:
        """Cut pair of every client this round (the default cuts for everybody)."""
        return dict.fromkeys(clients, self.cuts)

    def helper_order(self, helper: int, clients: Sequence[int]) -> list[str]:
        """Task priority order sent to ``helper``; empty means first come first served."""
        return []

    def client_config(self, client: int, helper: int) -> dict[str, Any]:
        """Extra settings for one client's train message (none by default)."""
        return {}

    def observe(
        self,
        server_round: int,
        client_replies: Sequence[Message],
        helper_replies: Sequence[Message],
    ) -> None:
        """Called with the round's replies before aggregation (nothing by default)."""

    # -- Strategy API -----------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Discover nodes, assign clients to helpers, and build client and helper messages."""
        server_round += self.round_offset
        self.wait_for_clients(grid)
        config["mode"] = "split" if self.split else "fedavg"
        inner = list(
            self.strategy.configure_train(server_round, arrays, config, self.client_grid(grid))
        )
        inner = [m for m in inner if m.metadata.dst_node_id in self.nodes]
        if not self.split:
            self.assignment = RoundAssignment({}, {}, time.perf_counter())
            return inner
        sampled = [m.metadata.dst_node_id for m in inner]
        helper_of = self.assign(server_round, sampled)
        inner = [m for m in inner if m.metadata.dst_node_id in helper_of]  # planned out
        cuts_of = self.client_cuts(server_round, sampled)
        # Round tokens: HMAC-signed for (run, round, client, helper) with a key derived
        # per helper from a per-run secret; each helper gets only its key, each client
        # only its token.
        run_id = int(grid.run.run_id)
        if self._run_secret is None or self._run_secret[0] != run_id:
            self._run_secret = (run_id, new_run_secret())
        keys = {h: helper_key(self._run_secret[1], run_id, h) for h in set(helper_of.values())}
        tokens = {c: sign_token(keys[h], run_id, server_round, c, h) for c, h in helper_of.items()}
        self.assignment = RoundAssignment(helper_of, tokens, time.perf_counter(), cuts_of)
        columns, client_sync = self._sync_schedule(server_round, sorted(helper_of))

        helper_messages = []
        for helper in self.helpers:
            served = [c for c, h in helper_of.items() if h == helper]
            if not served:
                continue
            body_keys = sorted({k for c in served for k in self.part_keys(cuts_of[c])[1]})
            helper_config = ConfigRecord(
                {
                    **_plain(config),
                    "server-round": server_round,
                    "cuts": self.cuts,
                    "clients": [str(c) for c in served],
                    "client-cuts": [cuts_of[c] for c in served],
                    "token-key": keys[helper],
                    "order": self.helper_order(helper, served),
                    "listen-address": self.nodes[helper].listen_address,
                    "round-timeout": float(self.round_timeout),
                }
            )
            if columns is not None:
                helper_config.update(
                    pack_schedule(columns[:, [client_sync[c]["column"] for c in served]])
                )
                helper_config["client-parts"] = self.sampling["client-parts"]
            helper_messages.append(
                Message(
                    RecordDict({"arrays": _subset(arrays, body_keys), "config": helper_config}),
                    dst_node_id=helper,
                    message_type=HELPER_TRAIN,
                )
            )

        config_key = getattr(self.strategy, "configrecord_key", "config")
        client_messages = []
        for message in inner:
            client = message.metadata.dst_node_id
            inner_config = message.content.config_records.get(config_key, ConfigRecord())
            head_keys, _, tail_keys = self.part_keys(cuts_of[client])
            client_config = ConfigRecord(
                {
                    **_plain(inner_config),
                    "cuts": cuts_of[client],
                    "helper-address": self.nodes[helper_of[client]].address,
                    "round-token": tokens[client],
                    **self.client_config(client, helper_of[client]),
                }
            )
            if columns is not None:
                column = client_sync[client]["column"]
                client_config.update(pack_schedule(columns[:, [column]]))
                client_config["sample-offset"] = client_sync[client]["offset"]
                client_config["client-parts"] = self.sampling["client-parts"]
            client_messages.append(
                Message(
                    RecordDict(
                        {"arrays": _subset(arrays, head_keys + tail_keys), "config": client_config}
                    ),
                    dst_node_id=client,
                    message_type=CLIENT_TRAIN,
                )
            )
        log(
            INFO,
            "configure_train: %d clients on %d helpers, cuts %s",
            len(client_messages),
            len(helper_messages),
            ", ".join(sorted(set(cuts_of.values()))),
        )
        # Helpers first: the simulation engine hands out workers in this order, and a
        # client can only progress once its helper serves.
        return helper_messages + client_messages

    def _sync_schedule(
        self, server_round: int, clients: Sequence[int]
    ) -> tuple[Any, dict[int, dict[str, int]]]:
        """The round's synchronous-step schedule, or ``(None, {})`` without global sampling.

        Returns the ``(steps, clients)`` counts (columns in the order of ``clients``) and
        per client its column and the samples it drew in earlier rounds.
        """
        if not self.sampling["sync"] or not clients:
            return None, {}
        sizes = [self.nodes[c].examples for c in clients]
        empty = [c for c, n in zip(clients, sizes, strict=True) if n < 1]
        if empty:
            raise RuntimeError(
                f"clients {empty} reported no training examples; global sampling draws "
                "from every client's data"
            )
        costs = [float(self.nodes[c].info.get("compute-factor", 1.0)) for c in clients]
        sampler = sampler_from_config(self.sampling, sizes, costs)
        counts, offsets = round_schedule(
            sampler,
            server_round,
            int(self.sampling["sync-steps"]),
            int(self.sampling["local-epochs"]),
        )
        self.schedules[server_round] = counts
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
        return counts, {
            c: {"column": i, "offset": int(offsets[i])} for i, c in enumerate(clients)
        }

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Assemble one full model per client and let the wrapped strategy aggregate."""
        server_round += self.round_offset
        replies = list(replies)
        assignment = self.assignment
        if assignment is None:
            raise RuntimeError("aggregate_train called before configure_train")
        bodies: dict[int, ArrayRecord] = {}
        client_replies: list[Message] = []
        helper_replies: list[Message] = []
        for reply in replies:
            src = reply.metadata.src_node_id
            if reply.metadata.message_type == HELPER_TRAIN or src in self.helpers:
                if reply.has_error():
                    log(WARNING, "helper %d failed: %s", src, reply.error.reason)
                    continue
                helper_replies.append(reply)
                for name, record in reply.content.array_records.items():
                    if name.startswith("body."):
                        bodies[int(name.removeprefix("body."))] = record
            else:
                client_replies.append(reply)

        self.observe(server_round, client_replies, helper_replies)
        for reply in helper_replies:
            steps = reply.content.metric_records["metrics"].get("step-examples")
            if steps is not None:
                self.sync_steps.setdefault(server_round, {})[reply.metadata.src_node_id] = [
                    int(n) for n in steps
                ]
            peak = reply.content.metric_records["metrics"].get("peak-rss-mib")
            if peak is not None:
                src = reply.metadata.src_node_id
                self.helper_peak_mib[src] = max(self.helper_peak_mib.get(src, 0.0), float(peak))
        if self.split:
            full_replies = list(self._full_model_replies(client_replies, bodies, assignment))
        else:
            full_replies = client_replies
        completed = sum(1 for r in full_replies if not r.has_error())
        if completed < self.min_completed_clients:
            log(
                ERROR,
                "round %d: only %d complete client updates, fewer than min-completed-clients="
                "%d; the global model is kept as it was",
                server_round,
                completed,
                self.min_completed_clients,
            )
            self.round_times[server_round] = time.perf_counter() - assignment.started
            return None, None
        arrays, metrics = self.strategy.aggregate_train(server_round, full_replies)
        wall = time.perf_counter() - assignment.started
        self.round_times[server_round] = wall
        if metrics is not None:
            metrics["round-wall-seconds"] = wall
        loss = metrics.get("train_loss", float("nan")) if metrics else float("nan")
        acc = metrics.get("train_acc", float("nan")) if metrics else float("nan")
        log(
            INFO,
            "round %d: %d/%d client updates aggregated, train_loss %.4f, train_acc %.4f, "
            "wall %.2f s",
            server_round,
            sum(1 for r in full_replies if not r.has_error()),
            len(client_replies),
            loss,
            acc,
            wall,
        )
        return arrays, metrics

    def _full_model_replies(
        self,
        client_replies: Sequence[Message],
        bodies: Mapping[int, ArrayRecord],
        assignment: RoundAssignment,
    ) -> Iterator[Message]:
        for reply in client_replies:
            src = reply.metadata.src_node_id
            if reply.has_error():
                yield reply
                continue
            body = bodies.get(src)
            if body is None:
                log(WARNING, "client %d: its helper returned no body; update dropped", src)
                continue
            head_tail = reply.content.array_records["arrays"]
            body_keys = set(self.part_keys(assignment.cuts_of[src])[1])
            full = ArrayRecord()
            for key in self.full_keys:
                full[key] = body[key] if key in body_keys else head_tail[key]
            reply.content = RecordDict(
                {"arrays": full, "metrics": reply.content.metric_records["metrics"]}
            )
            yield reply

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on clients (full model run locally), via the wrapped strategy.

        Called once the round's training is aggregated, so ``arrays`` is the round's global
        model: :attr:`on_round_end` (checkpoints) runs here.
        """
        server_round += self.round_offset
        if self.on_round_end is not None:
            self.on_round_end(server_round, arrays, self)
        self.wait_for_clients(grid, "evaluate")
        return self.strategy.configure_evaluate(
            server_round, arrays, config, self.client_grid(grid)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation metrics with the wrapped strategy."""
        server_round += self.round_offset
        return self.strategy.aggregate_evaluate(server_round, replies)

    # -- state for checkpoints --------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-ready state a resumed run needs besides the model (round times)."""
        return {"round_times": {str(r): t for r, t in self.round_times.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.round_times = {int(r): float(t) for r, t in state.get("round_times", {}).items()}

    def summary(self) -> None:
        """Log the configuration."""
        log(
            INFO,
            "\t├──> Split learning: cuts %s, round timeout %.0fs",
            self.cuts,
            self.round_timeout,
        )
        log(
            INFO,
            "\t│\t└── head %d, body %d, tail %d tensors",
            len(self.head_keys),
            len(self.body_keys),
            len(self.tail_keys),
        )
        log(INFO, "\t└──> Aggregation by %s:", type(self.strategy).__name__)
        self.strategy.summary()


def _subset(arrays: ArrayRecord, keys: Sequence[str]) -> ArrayRecord:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise KeyError(f"global model lacks {missing[:3]}: do the cuts match the model?")
    subset = ArrayRecord()
    for key in keys:
        subset[key] = arrays[key]
    return subset


def _plain(config: ConfigRecord) -> dict[str, Any]:
    return dict(config.items())
