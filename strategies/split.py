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

Chains: cuts with more than two names (``"conv2,relu2,fc2"``) split the body again into
pieces, one per helper of a client's chain ``client -> h1 -> h2 -> ... -> client``. Each
client gets a chain of distinct helpers (:meth:`SplitStrategy.assign_chains`); each
helper is told, per client it serves, which piece it runs, the next hop's address and
the client's round token for that next hop (one token per (client, helper) hop). A
client's full model is its head and tail plus every helper's piece.

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

from flsplit.plan.sampling.samplers import (
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
    chain_of: dict[int, list[int]] = field(default_factory=dict)


class SplitStrategy(Strategy):
    """Parallel split learning with helper nodes around any Flower strategy.

    Parameters
    ----------
    part_keys : callable
        ``part_keys(cuts)`` returns the ``state_dict`` keys of every part for cuts such as
        ``"conv2,fc2"`` (e.g. from :func:`flsplit.model.split.part_state_keys`).
    cuts : str
        The default cut points, as sent to the nodes (comma-separated module names);
        :meth:`client_cuts` may choose others per client. More than two cuts make every
        client's body a chain of ``len(cuts) - 1`` pieces on as many helpers.
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
        checked by :func:`flsplit.plan.sampling.samplers.check_sync_config`); ``None`` or
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
        self._part_keys: dict[str, list[list[str]]] = {}
        self.cuts = cuts
        self.head_keys, self.body_keys, self.tail_keys = self.part_keys(cuts)
        self.chain_length = len(self.piece_keys(cuts))
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
        from flsplit.model.split import split_model
        from flsplit.task import parse_cuts

        parts = split_model(model, parse_cuts(cuts), example_input)
        return cls.from_split(parts, model, example_input, strategy=strategy, **kwargs)

    @classmethod
    def from_split(
        cls, parts: Any, model: Any = None, example_input: Any = None, **kwargs: Any
    ) -> SplitStrategy:
        """Build the strategy from a :class:`flsplit.model.split.SplitModel` (and, for other
        cut pairs than its own, the model it came from)."""
        from flsplit.model.split import part_state_keys
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

    def _parts(self, cuts: str) -> list[list[str]]:
        if cuts not in self._part_keys:
            parts = [list(k) for k in self._part_keys_fn(cuts)]
            if len(parts) < 3:
                raise ValueError(
                    f"cuts {cuts!r} give {len(parts)} parts; split learning needs head, "
                    "body and tail"
                )
            self._part_keys[cuts] = parts
        return self._part_keys[cuts]

    def part_keys(self, cuts: str) -> tuple[list[str], list[str], list[str]]:
        """Head, body and tail ``state_dict`` keys for ``cuts`` (cached); the body is every
        piece of a chain together."""
        parts = self._parts(cuts)
        return parts[0], [k for piece in parts[1:-1] for k in piece], parts[-1]

    def piece_keys(self, cuts: str) -> list[list[str]]:
        """``state_dict`` keys of each body piece for ``cuts``, in chain order (one piece
        for a cut pair)."""
        return self._parts(cuts)[1:-1]

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

    def assign_chains(
        self, server_round: int, clients: Sequence[int], length: int
    ) -> dict[int, list[int]]:
        """Assign each client a chain of ``length`` distinct helpers (round-robin: client
        ``i`` starts at helper ``i + round - 1`` and takes the next ones in turn), so every
        helper serves pieces of many clients.

        Raises
        ------
        RuntimeError
            If fewer than ``length`` helpers are known.
        """
        helpers = self.helpers
        if len(helpers) < length:
            raise RuntimeError(
                f"chain-length={length} needs at least {length} helper nodes, "
                f"{len(helpers)} answered discovery: lower chain-length, or raise num-helpers "
                "(simulation) / start more helper SuperNodes (deployment)"
            )
        offset = server_round - 1
        return {
            c: [helpers[(i + offset + j) % len(helpers)] for j in range(length)]
            for i, c in enumerate(sorted(clients))
        }

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
        if self.chain_length > 1:
            chain_of = self.assign_chains(server_round, sampled, self.chain_length)
        else:
            chain_of = {c: [h] for c, h in self.assign(server_round, sampled).items()}
        helper_of = {c: chain[0] for c, chain in chain_of.items()}
        inner = [m for m in inner if m.metadata.dst_node_id in helper_of]  # planned out
        cuts_of = self.client_cuts(server_round, sampled)
        # Round tokens: HMAC-signed for (run, round, client, helper) with a key derived
        # per helper from a per-run secret; each helper gets only its key, each client
        # only the token for its first helper, a helper in a chain the client's token for
        # its next hop. One token per (client, helper) hop.
        run_id = int(grid.run.run_id)
        if self._run_secret is None or self._run_secret[0] != run_id:
            self._run_secret = (run_id, new_run_secret())
        used = {h for chain in chain_of.values() for h in chain}
        keys = {h: helper_key(self._run_secret[1], run_id, h) for h in used}
        hop_tokens = {
            (c, h): sign_token(keys[h], run_id, server_round, c, h)
            for c, chain in chain_of.items()
            for h in chain
        }
        tokens = {c: hop_tokens[(c, h)] for c, h in helper_of.items()}
        self.assignment = RoundAssignment(
            helper_of, tokens, time.perf_counter(), cuts_of, chain_of
        )
        columns, client_sync = self._sync_schedule(server_round, sorted(helper_of))

        helper_messages = []
        for helper in self.helpers:
            # (client, position in its chain) of every piece this helper runs
            served = [
                (c, chain.index(helper)) for c, chain in chain_of.items() if helper in chain
            ]
            if not served:
                continue
            body_keys = sorted(
                {k for c, j in served for k in self.piece_keys(cuts_of[c])[j]}
            )
            nexts = [
                chain_of[c][j + 1] if j + 1 < len(chain_of[c]) else None for c, j in served
            ]
            helper_config = ConfigRecord(
                {
                    **_plain(config),
                    "server-round": server_round,
                    "cuts": self.cuts,
                    "clients": [str(c) for c, _ in served],
                    "client-cuts": [cuts_of[c] for c, _ in served],
                    "client-piece": [j + 1 for _, j in served],
                    "client-next": [
                        self.nodes[n].address if n is not None else "" for n in nexts
                    ],
                    "client-next-token": [
                        hop_tokens[(c, n)] if n is not None else ""
                        for (c, _), n in zip(served, nexts, strict=True)
                    ],
                    "token-key": keys[helper],
                    "order": self.helper_order(helper, [c for c, _ in served]),
                    "listen-address": self.nodes[helper].listen_address,
                    "round-timeout": float(self.round_timeout),
                }
            )
            if columns is not None:
                helper_config.update(
                    pack_schedule(columns[:, [client_sync[c]["column"] for c, _ in served]])
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
            "configure_train: %d clients on %d helpers%s, cuts %s",
            len(client_messages),
            len(helper_messages),
            f" (chains of {self.chain_length})" if self.chain_length > 1 else "",
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
        bodies: dict[int, list[ArrayRecord]] = {}  # one piece per helper of the chain
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
                        bodies.setdefault(int(name.removeprefix("body.")), []).append(record)
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
        bodies: Mapping[int, Sequence[ArrayRecord]],
        assignment: RoundAssignment,
    ) -> Iterator[Message]:
        for reply in client_replies:
            src = reply.metadata.src_node_id
            if reply.has_error():
                yield reply
                continue
            body_keys = set(self.part_keys(assignment.cuts_of[src])[1])
            if not bodies.get(src):
                log(WARNING, "client %d: its helper returned no body; update dropped", src)
                continue
            body: dict[str, Any] = {}
            for piece in bodies[src]:
                for key in piece:
                    body[key] = piece[key]
            missing = body_keys - set(body)
            if missing:
                log(
                    WARNING,
                    "client %d: a helper of its chain returned no piece (%d body tensors "
                    "missing, e.g. %s); update dropped",
                    src,
                    len(missing),
                    sorted(missing)[0],
                )
                continue
            head_tail = reply.content.array_records["arrays"]
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
