"""Split learning with helper nodes as a Flower Message-API strategy.

:class:`SplitStrategy` wraps any Flower strategy (FedAvg by default). The wrapped
strategy samples clients and aggregates; this one discovers which nodes are helpers
(:mod:`strategies.discovery`), cuts the model (:mod:`strategies.parts`), gives each
client a chain of helpers and a round token per hop (:mod:`strategies.assignment`),
sends ``train.split`` to clients and ``train.helper`` to helpers
(:mod:`strategies.messages`, with the synchronous-step schedule of
:mod:`strategies.sync_schedule` under global sampling), then assembles one full-model
update per client from its head and tail and its helpers' body pieces
(:mod:`strategies.assembly`) and hands those to the wrapped strategy's
``aggregate_train``. Before that it logs every client and helper that failed in the round,
by the node its message went to, with the cause (:mod:`strategies.failures`; kept in
:attr:`SplitStrategy.failures`).

A chain is one helper long unless the cuts name more than two modules
(``"conv2,relu2,fc2"``): then the body is split again into pieces, one per helper of a
client's chain ``client -> h1 -> h2 -> ... -> client``.

The wrapped strategy stays itself. An app's own strategy may override ``start`` (Flower's
``advanced-pytorch`` example logs to W&B, keeps the best model and writes a results file
there, with private helpers and attributes its own methods set). Its ``start`` is the
app's round loop, so :meth:`SplitStrategy.start` runs *it*, on its own object: while it
runs, that object's Strategy API methods (:data:`ROUTED`) are instance attributes
pointing at this wrapper's, so every round its loop drives is a split round, and the
wrapper calls the methods they shadow (captured before routing, so never itself). Calling
the subclass's ``start`` with the wrapper as ``self`` instead would break on everything
the subclass keeps on its own object; copying the loop would drop what it adds. The
routing is removed when ``start`` returns or raises. A strategy that does not override
``start`` runs Flower's base loop on the wrapper, as it always did.
"""

from __future__ import annotations

import inspect
import time
from abc import ABCMeta
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from flwr.supercore import log

from flsplit.config import RunConfig
from flsplit.protocol import (
    BYTES_DOWN,
    BYTES_UP,
    CONFIG,
    HELPER_TRAIN,
    METRICS,
    MODE,
    ROLE_CLIENT,
    ROLE_HELPER,
    ROUND_WALL_SECONDS,
    TRAIN_ACC,
    TRAIN_LOSS,
    ClientResult,
    HelperResult,
    HelperTask,
)
from strategies.assembly import full_model_replies, incomplete_bodies, sort_replies
from strategies.assignment import (
    RoundAssignment,
    TokenIssuer,
    round_outcome,
    round_robin,
    round_robin_chains,
)
from strategies.discovery import (
    NodeGrid,
    NodeInfo,
    check_concurrency,
    check_roles,
    clients_needed,
    failure_summary,
    log_roles,
    query_nodes,
    wait_for,
    with_role,
)
from strategies.failures import Failure, SentMessages, log_failures, round_failures
from strategies.frozen_base import FrozenBase
from strategies.helper_links import HelperLinks
from strategies.messages import client_message, helper_messages
from strategies.parts import ModelParts, keys_of_split
from strategies.sync_schedule import SyncSchedule, draw_schedule

__all__ = ["ROUTED", "SplitStrategy"]

#: The wrapped strategy's methods that run split learning while its own ``start`` runs.
ROUTED = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate",
          "summary")


class _Built(ABCMeta):
    """Marks a strategy built once its whole constructor (a subclass's too) has run, so
    attributes set from then on that the wrapper lacks go to the wrapped strategy."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        strategy = super().__call__(*args, **kwargs)
        object.__setattr__(strategy, "_built", True)
        return strategy


class SplitStrategy(Strategy, metaclass=_Built):
    """Parallel split learning with helper nodes around any Flower strategy.

    Parameters
    ----------
    part_keys : callable
        ``part_keys(cuts)`` returns the ``state_dict`` keys of every part for cuts such as
        ``"conv2,fc2"`` (e.g. from :func:`flsplit.model.splitting.part_state_keys`).
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
        ``on_round_end(server_round, arrays, strategy)`` once a round is over, ``arrays``
        being its global model (e.g. to write a checkpoint and ``history.json``): right
        after that round's server-side ``evaluate_fn`` returned, else when the next round
        starts or the run ends; not when the run fails before.
    run_config : RunConfig or Mapping, optional
        The run config; the strategy reads its global-sampling settings (``sampler``,
        ``global-batch-size``, ...: :func:`flsplit.config.sync_settings`). ``None`` or
        ``sampler="local"``: every client trains on its own local batches.
    frozen_keys : sequence of str
        ``state_dict`` keys of the model's frozen parameters (``requires_grad=False``: a
        base fine-tuned through adapters; :meth:`for_model` and :meth:`from_split` read
        them from the model). In split rounds they go to each node once
        (:mod:`flsplit.client.base_cache`), are never aggregated and the wrapped strategy
        sees only the other tensors; the global model (checkpoints, ``evaluate_fn``) keeps
        them.
    link : callable, optional
        ``link(client, helper) -> (Mbit/s, latency ms)`` of emulated links, sent to each
        client so it emulates its link to its (first) helper; ``None`` emulates none.
    helper_links : HelperLinks, optional
        Which helpers of a chain reach which and the emulated rate and latency of each
        link, sent to the relaying helper of every hop (default: from ``run_config``:
        ``helper-links``, ``helper-link-mbps``, ``helper-link-latency-ms``). Round-robin
        chains use only these links.

    Raises
    ------
    ValueError
        If ``strategy`` is not a Flower Message-API strategy
        (``flwr.serverapp.strategy.Strategy``; a legacy ``flwr.server.strategy`` one
        included), is itself a :class:`SplitStrategy`, or overrides ``start`` but has
        one of the Strategy API methods to be routed (:data:`ROUTED`) as a property.

    Notes
    -----
    The wrapped strategy stays itself:

    - Its attributes and methods are reachable through the wrapper
      (``strategy.set_save_path_and_run_dir(...)``, ``strategy.fraction_evaluate``);
      once built, an attribute the wrapper does not have itself is read from and
      written to the wrapped strategy.
    - If its class overrides ``start``, :meth:`start` runs that ``start`` on the
      wrapped object, with its ``configure_train``, ``aggregate_train``,
      ``configure_evaluate``, ``aggregate_evaluate`` and ``summary`` routed to this
      wrapper's for the duration, so everything it does besides (results files,
      logging, best-model keeping from its ``evaluate_fn``) still happens on split
      rounds, and the :class:`~flwr.serverapp.strategy.Result` it returns is returned.
      Otherwise Flower's base loop runs on the wrapper.
    - The wrapper calls the wrapped strategy's own methods (overrides included, e.g. a
      learning-rate schedule in its ``configure_train``) with the rounds shifted by
      ``round_offset``; its ``start`` loop and ``evaluate_fn`` see Flower's rounds.
    - A ``start`` that calls a base class's method explicitly
      (``FedAvg.configure_train(self, ...)``) bypasses split learning for that call.

    Examples
    --------
    >>> strategy = SplitStrategy.for_model(Net(), x, cuts="conv2,fc3",
    ...                                    strategy=CustomFedAvg(fraction_train=0.5))
    >>> strategy.set_save_path_and_run_dir(path, run_dir)  # CustomFedAvg's own method
    >>> result = strategy.start(grid, arrays, num_rounds=10)  # CustomFedAvg.start, split
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
        run_config: RunConfig | Mapping[str, Any] | None = None,
        frozen_keys: Sequence[str] = (),
        link: Callable[[int, int], tuple[float, float]] | None = None,
        helper_links: HelperLinks | None = None,
    ) -> None:
        self.run_config = RunConfig.of(run_config)
        self.link = link
        self.helper_links = helper_links or HelperLinks.from_config(self.run_config)
        self.helper_links.bind(self)
        self.sampling = self.run_config.sync
        #: round -> helper -> samples of each synchronous step the helper ran
        self.sync_steps: dict[int, dict[int, list[int]]] = {}
        self.schedules: dict[int, Any] = {}  # round -> (steps, clients) counts
        #: client -> its own time per sample (ms) in its last synchronous round
        self.sample_ms: dict[int, float] = {}
        if min_completed_clients < 1:
            raise ValueError(
                f"min_completed_clients={min_completed_clients} must be at least 1"
            )
        self._parts = ModelParts(part_keys)
        self.cuts = cuts
        self.head_keys, self.body_keys, self.tail_keys = self.part_keys(cuts)
        self.chain_length = len(self.piece_keys(cuts))
        self.full_keys = self.head_keys + self.body_keys + self.tail_keys
        self.base = FrozenBase(frozen_keys, self.full_keys)
        #: round -> parameter bytes of its train messages and replies (FrozenBase.traffic)
        self.param_bytes: dict[int, dict[str, int]] = {}
        #: round -> client -> data-plane bytes it sent and received (bytes-up, bytes-down)
        self.data_bytes: dict[int, dict[int, dict[str, int]]] = {}
        self.strategy = _wrappable(strategy) if strategy is not None else FedAvg()
        # while the wrapped strategy's own start runs: its methods that ROUTED shadows
        self._shadowed: dict[str, Callable[..., Any]] = {}
        self.round_timeout = round_timeout
        self.query_timeout = query_timeout
        self.split = split
        self.min_completed_clients = min_completed_clients
        self.round_offset = round_offset
        self.on_round_end = on_round_end
        self.nodes: dict[int, NodeInfo] = {}
        #: node -> error text of its last discovery reply, while it fails discovery
        self.discovery_failures: dict[int, str] = {}
        self.assignment: RoundAssignment | None = None
        self.round_times: dict[int, float] = {}
        #: "train", "evaluate" (the clients') and "server" metrics per round, as the
        #: run's Result holds them but by flsplit's round, kept for ``history.json``
        self.results: dict[str, dict[int, dict[str, Any]]] = {
            "train": {}, "evaluate": {}, "server": {}
        }
        #: the round whose on_round_end is due, and its global model
        self._ending: tuple[int, ArrayRecord] | None = None
        self._round_arrays: ArrayRecord | None = None
        #: round -> the clients and helpers that failed in its training, and why
        self.failures: dict[int, list[Failure]] = {}
        self._sent = SentMessages(())  # the last configure_* call's messages
        #: round -> its clients, complete and failed updates, helpers (round_outcome)
        self.round_records: dict[int, dict[str, Any]] = {}
        self.helper_peak_mib: dict[int, float] = {}  # peak resident memory per helper
        self._known_ids: frozenset[int] = frozenset()
        self._tokens = TokenIssuer()  # holds the run's secret, never sent

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
        from flsplit.model.splitting import parse_cuts, split_model

        parts = split_model(model, parse_cuts(cuts), example_input)
        return cls.from_split(parts, model, example_input, strategy=strategy, **kwargs)

    @classmethod
    def from_split(
        cls, parts: Any, model: Any = None, example_input: Any = None, **kwargs: Any
    ) -> SplitStrategy:
        """Build the strategy from a :class:`flsplit.model.splitting.SplitModel` (and, for other
        cut pairs than its own, the model it came from); its frozen parameters are the
        frozen base (``frozen_keys``)."""
        from flsplit.model.frozen import frozen_keys

        own, keys_for = keys_of_split(parts, model, example_input)
        if "frozen_keys" not in kwargs:
            modules = [model] if model is not None else list(parts.parts)
            kwargs["frozen_keys"] = sorted({k for m in modules for k in frozen_keys(m)})
        return cls(part_keys=keys_for, cuts=own, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names SplitStrategy lacks: the wrapped strategy's own attributes
        # and methods, so an app that configures the strategy it built keeps working.
        inner = self.__dict__.get("strategy")
        if inner is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Once built, a name the wrapper lacks belongs to the wrapped strategy, as when it is
        # read (``strategy.save_path = ...`` is what the wrapped strategy's start reads).
        # During construction every attribute is the wrapper's own.
        own = self.__dict__
        if (
            own.get("_built")
            and name not in own
            and not name.startswith("__")
            and not hasattr(type(self), name)
        ):
            setattr(own["strategy"], name, value)
        else:
            object.__setattr__(self, name, value)

    # -- the run ----------------------------------------------------------------------

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        **kwargs: Any,
    ) -> Result:
        """Run the rounds: the wrapped strategy's own ``start`` if its class has one, with
        split learning inside, else Flower's loop.

        Parameters are those of :meth:`flwr.serverapp.strategy.Strategy.start`;
        ``kwargs`` go to an overriding ``start`` that takes more.

        Returns
        -------
        Result
            What the ``start`` that ran returned.
        """
        args = {
            "num_rounds": num_rounds,
            "timeout": timeout,
            "train_config": train_config,
            "evaluate_config": evaluate_config,
            "evaluate_fn": self._evaluating(evaluate_fn) if evaluate_fn is not None else None,
            **kwargs,
        }
        self._ending = None
        if not _overrides_start(self.strategy):
            result = super().start(grid, initial_arrays, **args)
        else:
            log(INFO, "%s runs its own start() with split learning inside",
                type(self.strategy).__name__)
            with self._routed():
                result = self.strategy.start(grid, initial_arrays, **args)
        self._end_round()
        return result

    def _evaluating(
        self, evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None]
    ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """``evaluate_fn`` keeping its metrics in :attr:`results`; a round is over once
        its server-side evaluation returned."""

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate_fn(server_round, arrays)
            server_round += self.round_offset
            if metrics is not None:
                self._record("server", server_round, metrics)
            if self._ending is not None and self._ending[0] == server_round:
                self._end_round()
            return metrics

        return evaluate

    def _record(self, kind: str, server_round: int, metrics: MetricRecord) -> None:
        table = self.results[kind]
        if server_round <= self.round_offset and server_round in table:
            # a resumed run evaluates the model it starts from again: the rounds before
            # the resume point keep what the run that did them recorded
            return
        table[server_round] = dict(metrics)

    def _end_round(self) -> None:
        """Run :attr:`on_round_end` for the round that is over, once."""
        ending, self._ending = self._ending, None
        if ending is not None and self.on_round_end is not None:
            self.on_round_end(ending[0], ending[1], self)

    @contextmanager
    def _routed(self) -> Iterator[None]:
        """Point the wrapped strategy's :data:`ROUTED` methods at this wrapper's while the
        block runs, and restore them (an instance attribute it had included) after."""
        if self._shadowed:
            raise RuntimeError("start() is already running on this strategy")
        inner = self.strategy
        own = vars(inner)
        had = {name: own[name] for name in ROUTED if name in own}
        self._shadowed = {name: getattr(inner, name) for name in ROUTED}
        try:
            for name in ROUTED:
                setattr(inner, name, getattr(self, name))
            yield
        finally:
            for name in ROUTED:
                if name in had:
                    setattr(inner, name, had[name])
                else:
                    own.pop(name, None)
            self._shadowed = {}

    def _wrapped(self, name: str) -> Callable[..., Any]:
        """The wrapped strategy's own method ``name``, never the routed one (which would
        call this wrapper again)."""
        method = self._shadowed.get(name)
        return method if method is not None else getattr(self.strategy, name)

    def part_keys(self, cuts: str) -> tuple[list[str], list[str], list[str]]:
        """Head, body and tail ``state_dict`` keys for ``cuts`` (cached); the body is every
        piece of a chain together."""
        return self._parts.head_body_tail(cuts)

    def piece_keys(self, cuts: str) -> list[list[str]]:
        """``state_dict`` keys of each body piece for ``cuts``, in chain order (one piece
        for a cut pair)."""
        return self._parts.pieces(cuts)

    # -- roles ------------------------------------------------------------------------

    @property
    def helpers(self) -> list[int]:
        """Ids of the known helper nodes."""
        return with_role(self.nodes, ROLE_HELPER)

    @property
    def clients(self) -> list[int]:
        """Ids of the known client nodes."""
        return with_role(self.nodes, ROLE_CLIENT)

    def discover(self, grid: Grid) -> None:
        """Query nodes not seen yet for role, examples and data-plane address.

        A node that does not answer in time (still starting, say) is asked again at the
        next call.
        """
        node_ids = sorted(grid.get_node_ids())
        if frozenset(node_ids) == self._known_ids:
            return
        unanswered = query_nodes(
            grid, self.nodes, node_ids, self.query_timeout, self.discovery_failures,
            refuse=self.base.refusal if self.split else None,
        )
        self._known_ids = frozenset(node_ids) - frozenset(unanswered)
        if self.split:
            check_roles(self.nodes, self.run_config.num_helpers)
            check_concurrency(self.nodes)
        log_roles(self.nodes)

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
        needed = clients_needed(self.strategy, stage)

        def too_few() -> str:
            failed = failure_summary(self.discovery_failures)
            return (
                f"{len(self.clients)} client nodes (and {len(self.helpers)} helpers) "
                f"answered discovery within {self.query_timeout:.0f} s, but the wrapped "
                f"strategy needs at least {needed} clients (its min_available_nodes / "
                f"min_{stage}_nodes): "
                + (f"{failed}: fix what it says, or " if failed else "")
                + "start more client SuperNodes, lower those minimums, or give the nodes "
                "more time (query_timeout)"
            )

        wait_for(
            lambda: self.discover(grid),
            lambda: len(self.client_grid(grid).get_node_ids()),
            needed,
            self.query_timeout,
            too_few,
        )

    def client_grid(self, grid: Grid) -> NodeGrid:
        """The grid as the wrapped strategy sees it: clients only."""
        return NodeGrid(grid, lambda: self.clients)

    # -- planning ---------------------------------------------------------------------

    def assign(self, server_round: int, clients: Sequence[int]) -> dict[int, int]:
        """Assign clients to helpers (round-robin over the known helpers)."""
        return round_robin(self.helpers, server_round, clients)

    def assign_chains(
        self, server_round: int, clients: Sequence[int], length: int
    ) -> dict[int, list[int]]:
        """Assign each client a chain of ``length`` distinct helpers, each linked to the
        next (round-robin over the helpers in index order: client ``i`` starts at helper
        ``i + round - 1`` and takes the next ones in turn, over existing links only), so
        every helper serves pieces of many clients.

        Raises
        ------
        RuntimeError
            If fewer than ``length`` helpers are known, or the helper links leave no
            route of ``length`` helpers.
        """
        # in helper index order (the order helper-links and planned routes speak of)
        helpers = sorted(self.helpers, key=lambda h: (self.nodes[h].index, h))
        chains = round_robin_chains(helpers, server_round, clients, length, self.helper_links)
        routes = [">".join(str(self.nodes[h].index) for h in chain) for chain in chains.values()]
        log(INFO, "round %d round-robin chains (helper indices: clients): %s", server_round,
            {r: routes.count(r) for r in sorted(set(routes))})
        return chains

    def client_cuts(self, server_round: int, clients: Sequence[int]) -> dict[int, str]:
        """Cut pair of every client this round (the default cuts for everybody)."""
        return dict.fromkeys(clients, self.cuts)

    def helper_order(self, helper: int, clients: Sequence[int]) -> list[HelperTask]:
        """Task priority order sent to ``helper``; empty means first come first served."""
        return []

    def client_micro_batches(self, server_round: int, clients: Sequence[int]) -> dict[int, int]:
        """Micro-batches per batch of each client's chain this round; a client left out
        uses the run config's ``micro-batches`` (everybody, by default)."""
        return {}

    def client_link(self, client: int, helper: int) -> tuple[float, float] | None:
        """The emulated link ``(rate Mbit/s, latency ms)`` of a client to its helper, or
        ``None`` (without ``link``)."""
        if self.link is None:
            return None
        rate, latency = self.link(client, helper)
        return float(rate), float(latency)

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
        self._end_round()  # the previous round's, if no server-side evaluation ended it
        server_round += self.round_offset
        self._round_arrays = arrays
        if self.split:  # its hash first: discovery refuses a node holding another base
            self.base.take(arrays)
        self.wait_for_clients(grid)
        config[MODE] = "split" if self.split else "fedavg"
        inner = list(
            self._wrapped("configure_train")(  # it sees the trainable tensors only
                server_round,
                self.base.trainable(arrays) if self.split else arrays,
                config,
                self.client_grid(grid),
            )
        )
        inner = [m for m in inner if m.metadata.dst_node_id in self.nodes]
        if not self.split:
            self.assignment = RoundAssignment({}, {}, time.perf_counter())
            self._sent = SentMessages(inner)
            return inner
        sampled = [m.metadata.dst_node_id for m in inner]
        chain_of = self._chains(server_round, sampled)
        inner = [m for m in inner if m.metadata.dst_node_id in chain_of]  # planned out
        cuts_of = self.client_cuts(server_round, sampled)
        tokens = self._tokens.issue(int(grid.run.run_id), server_round, chain_of)
        self.assignment = assignment = RoundAssignment(
            helper_of={c: chain[0] for c, chain in chain_of.items()},
            tokens=tokens.first_hop(chain_of),
            started=time.perf_counter(),
            cuts_of=cuts_of,
            chain_of=chain_of,
            micro_of=self.client_micro_batches(server_round, sorted(chain_of)),
        )
        schedule = self._sync_schedule(server_round, sorted(chain_of))
        to_helpers = helper_messages(
            arrays,
            config,
            server_round=server_round,
            helpers=self.helpers,
            assignment=assignment,
            tokens=tokens,
            nodes=self.nodes,
            piece_keys=self.piece_keys,
            helper_order=self.helper_order,
            round_timeout=self.round_timeout,
            schedule=schedule,
            base=self.base,
            micro_batches=assignment.micro_of,
            hop_link=self.helper_links,
        )
        to_clients = [
            self._client_message(m, arrays, server_round, assignment, schedule) for m in inner
        ]
        log(
            INFO,
            "configure_train: %d clients on %d helpers%s, cuts %s",
            len(to_clients),
            len(to_helpers),
            f" (chains of {self.chain_length})" if self.chain_length > 1 else "",
            ", ".join(sorted(set(cuts_of.values()))),
        )
        # Helpers first: the simulation engine hands out workers in this order, and a
        # client can only progress once its helper serves.
        messages = to_helpers + to_clients
        self._sent = SentMessages(messages, self.helpers)
        self.base.sending(messages)
        return messages

    def _chains(self, server_round: int, clients: Sequence[int]) -> dict[int, list[int]]:
        """Each client's chain of helpers; one helper long (from :meth:`assign`) without
        chains, which is the hook a planner overrides."""
        if self.chain_length > 1:
            return self.assign_chains(server_round, clients, self.chain_length)
        return {c: [h] for c, h in self.assign(server_round, clients).items()}

    def _client_message(
        self,
        inner: Message,
        arrays: ArrayRecord,
        server_round: int,
        assignment: RoundAssignment,
        schedule: SyncSchedule | None,
    ) -> Message:
        client = inner.metadata.dst_node_id
        helper = assignment.helper_of[client]
        cuts = assignment.cuts_of[client]
        head_keys, _, tail_keys = self.part_keys(cuts)
        return client_message(
            inner,
            arrays,
            config_key=getattr(self.strategy, "configrecord_key", CONFIG),
            head_tail_keys=self.base.to_send(client, head_keys + tail_keys),
            base_hash=self.base.hash,
            server_round=server_round,
            cuts=cuts,
            helper_address=self.nodes[helper].address,
            token=assignment.tokens[client],
            link=self.client_link(client, helper),
            schedule=schedule,
            micro_batches=assignment.micro_of.get(client, 0),
        )

    def _sync_schedule(self, server_round: int, clients: Sequence[int]) -> SyncSchedule | None:
        """The round's synchronous-step schedule (kept in :attr:`schedules`), or ``None``
        without global sampling."""
        schedule = draw_schedule(
            self.sampling, self.nodes, server_round, clients, measured=self.sample_ms
        )
        if schedule is not None:
            self.schedules[server_round] = schedule.counts
        return schedule

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Assemble one full model per client and let the wrapped strategy aggregate."""
        server_round += self.round_offset
        assignment = self.assignment
        if assignment is None:
            raise RuntimeError("aggregate_train called before configure_train")
        replies = list(replies)
        sent = self._sent
        refused: dict[int, Failure] = {}
        if self.split:
            replies, refused = self.base.received(server_round, replies, sent)
            self.param_bytes[server_round] = self.base.traffic(server_round)
        by_sender = sort_replies(replies, sent)

        def body_keys(client: int) -> list[str]:  # what its helpers send back
            return self.base.trainable_of(self.part_keys(assignment.cuts_of[client])[1])

        incomplete = (
            incomplete_bodies(by_sender.clients, by_sender.bodies, body_keys)
            if self.split
            else {}
        )
        failures = round_failures(
            sent,
            replies,
            chain_of=assignment.chain_of,
            helper_results=by_sender.helper_results,
            pieces_from=by_sender.pieces_from,
            incomplete=incomplete,
        )
        if refused:  # refused for their frozen base, not silent
            failures = [f for f in failures if f.node not in refused] + list(refused.values())
        self.failures[server_round] = failures
        log_failures(server_round, failures)
        self._record_sample_times(by_sender.clients)
        self._record_data_bytes(server_round, by_sender.clients)
        self.observe(server_round, by_sender.clients, by_sender.helpers)
        self._record_helper_metrics(server_round, by_sender.helpers)
        if self.split:
            full_replies = list(  # trainable tensors and buffers only
                full_model_replies(
                    by_sender.clients, by_sender.bodies, body_keys, self.base.trainable_keys
                )
            )
        else:
            full_replies = by_sender.clients
        completed = sum(1 for r in full_replies if not r.has_error())
        clients = sum(1 for m in sent.messages if m.metadata.message_type != HELPER_TRAIN)
        self.round_records[server_round] = round_outcome(
            assignment,  # an error reply may come from the SuperLink: only replies count
            (r.metadata.src_node_id for r in by_sender.clients if not r.has_error()),
            (r.metadata.src_node_id for r in full_replies if not r.has_error()),
            aggregated=completed >= self.min_completed_clients,
        )
        if completed < self.min_completed_clients:
            log(
                ERROR,
                "round %d: only %d complete client updates of %d, fewer than "
                "min-completed-clients=%d; the global model is kept as it was%s",
                server_round,
                completed,
                clients,
                self.min_completed_clients,
                f" ({len(failures)} nodes failed: see above)" if failures else "",
            )
            self.round_times[server_round] = time.perf_counter() - assignment.started
            self._ending = (server_round, self._kept_arrays())
            return None, None
        arrays, metrics = self._wrapped("aggregate_train")(server_round, full_replies)
        if self.split and arrays is not None:  # the global model keeps its frozen base
            arrays = self.base.whole(arrays)
        wall = time.perf_counter() - assignment.started
        self.round_times[server_round] = wall
        self._ending = (server_round, arrays if arrays is not None else self._kept_arrays())
        if metrics is not None:
            metrics[ROUND_WALL_SECONDS] = wall
            self._record("train", server_round, metrics)
        figures = "".join(
            f", {key} {metrics[key]:.4f}" for key in (TRAIN_LOSS, TRAIN_ACC)
            if metrics is not None and key in metrics
        )
        moved = self.data_bytes.get(server_round)
        if moved:
            up = sum(b[BYTES_UP] for b in moved.values()) / 1e6
            down = sum(b[BYTES_DOWN] for b in moved.values()) / 1e6
            figures += f", data plane {BYTES_UP} {up:.2f} MB, {BYTES_DOWN} {down:.2f} MB"
        log(
            INFO,
            "round %d: %d/%d client updates aggregated%s, wall %.2f s",
            server_round, completed, clients, figures, wall,
        )
        return arrays, metrics

    def _kept_arrays(self) -> ArrayRecord:
        """The global model of a round that aggregated nothing: the one it started from."""
        return self._round_arrays if self._round_arrays is not None else ArrayRecord()

    def _record_sample_times(self, client_replies: Sequence[Message]) -> None:
        """Under global sampling, keep each client's own time per sample this round: its
        stages 1, 3 and 5 and data loading (not the helper's service, so not the waits for
        other clients) per step, over its samples. The Dirichlet sampler's straggler
        weight and the step planner use it from the next round on."""
        if not self.sampling.sync:
            return
        for reply in client_replies:
            if reply.has_error() or METRICS not in reply.content.metric_records:
                continue
            result = ClientResult.from_metrics(reply.content.metric_records[METRICS])
            if result is None or result.examples < 1 or result.batches < 1:
                continue
            per_step = result.stage1_ms + result.stage3_ms + result.stage5_ms + result.load_ms
            if per_step > 0:
                self.sample_ms[reply.metadata.src_node_id] = (
                    per_step * result.batches / result.examples
                )

    def _record_data_bytes(self, server_round: int, client_replies: Sequence[Message]) -> None:
        """Keep the data-plane bytes each client sent and received this round (what its
        codecs left of its activations and gradients, headers included)."""
        moved = {}
        for reply in client_replies:
            if reply.has_error() or METRICS not in reply.content.metric_records:
                continue
            result = ClientResult.from_metrics(reply.content.metric_records[METRICS])
            if result is None:
                continue
            moved[reply.metadata.src_node_id] = {
                BYTES_UP: int(result.bytes_up), BYTES_DOWN: int(result.bytes_down)
            }
        if moved:
            self.data_bytes[server_round] = dict(sorted(moved.items()))

    def _record_helper_metrics(self, server_round: int, helper_replies: Sequence[Message]) -> None:
        """Keep each helper's synchronous step sizes and its peak memory; log the clients
        that aborted their round on it, with the cause the client sent."""
        for reply in helper_replies:
            src = reply.metadata.src_node_id
            result = HelperResult.from_content(reply.content)
            for client, reason in sorted(result.aborted.items()):
                log(WARNING, "round %d: client %s aborted its round on helper %d: %s",
                    server_round, client, src, reason)
            if result.step_examples is not None:
                self.sync_steps.setdefault(server_round, {})[src] = result.step_examples
            self.helper_peak_mib[src] = max(self.helper_peak_mib.get(src, 0.0), result.peak_rss_mib)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation on clients (full model run locally), via the wrapped strategy.

        Called once the round's training is aggregated, so ``arrays`` is the round's global
        model (the one :attr:`on_round_end` gets).
        """
        server_round += self.round_offset
        if self._ending is not None and self._ending[0] == server_round:
            self._ending = (server_round, arrays)
        self.wait_for_clients(grid, "evaluate")
        messages = list(
            self._wrapped("configure_evaluate")(
                server_round, arrays, config, self.client_grid(grid)
            )
        )
        self._sent = SentMessages(messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation metrics with the wrapped strategy (the clients that failed
        logged first, by the node each message went to)."""
        server_round += self.round_offset
        replies = list(replies)
        log_failures(server_round, round_failures(self._sent, replies), "evaluate")
        metrics = self._wrapped("aggregate_evaluate")(server_round, replies)
        if metrics is not None:
            self._record("evaluate", server_round, metrics)
        return metrics

    # -- state for checkpoints --------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-ready state a resumed run needs besides the model: every round's metrics
        and round time, the helpers' peak memory and synchronous steps, the parameter
        bytes."""
        return {
            "round_times": {str(r): t for r, t in self.round_times.items()},
            "results": {
                kind: {str(r): dict(m) for r, m in table.items()}
                for kind, table in self.results.items()
            },
            "helper_peak_mib": {str(h): m for h, m in self.helper_peak_mib.items()},
            "sync_steps": {
                str(r): {str(h): list(s) for h, s in steps.items()}
                for r, steps in self.sync_steps.items()
            },
            "param_bytes": {str(r): dict(b) for r, b in self.param_bytes.items()},
            "data_bytes": {
                str(r): {str(c): dict(b) for c, b in clients.items()}
                for r, clients in self.data_bytes.items()
            },
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (a key it lacks leaves that part as is)."""
        self.round_times = {int(r): float(t) for r, t in state.get("round_times", {}).items()}
        for kind, table in (state.get("results") or {}).items():
            if kind in self.results:
                self.results[kind] = {int(r): dict(m) for r, m in table.items()}
        for helper, mib in (state.get("helper_peak_mib") or {}).items():
            peak = max(self.helper_peak_mib.get(int(helper), 0.0), float(mib))
            self.helper_peak_mib[int(helper)] = peak
        for r, steps in (state.get("sync_steps") or {}).items():
            self.sync_steps[int(r)] = {int(h): [int(n) for n in s] for h, s in steps.items()}
        for r, figures in (state.get("param_bytes") or {}).items():
            self.param_bytes[int(r)] = {k: int(v) for k, v in figures.items()}
        for r, clients in (state.get("data_bytes") or {}).items():
            self.data_bytes[int(r)] = {
                int(c): {k: int(v) for k, v in b.items()} for c, b in clients.items()
            }

    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> Split learning: cuts %s, round timeout %.0fs", self.cuts,
            self.round_timeout)
        log(INFO, "\t│\t└── head %d, body %d, tail %d tensors", len(self.head_keys),
            len(self.body_keys), len(self.tail_keys))
        log(INFO, "\t└──> Aggregation by %s:", type(self.strategy).__name__)
        self._wrapped("summary")()



def _overrides_start(strategy: Strategy) -> bool:
    """Whether ``strategy`` brings its own ``start`` (its class's or its object's)."""
    own_start = "start" in getattr(strategy, "__dict__", {})
    return own_start or type(strategy).start is not Strategy.start


def _wrappable(strategy: Any) -> Strategy:
    """``strategy`` if split learning can wrap it.

    Raises
    ------
    ValueError
        Naming the reason and the fix.
    """
    kind = f"{type(strategy).__module__}.{type(strategy).__qualname__}"
    if isinstance(strategy, SplitStrategy):
        raise ValueError(
            f"strategy= is already a split strategy ({kind}); split learning wraps a "
            "strategy once: pass the strategy it wraps (its .strategy) instead"
        )
    if not isinstance(strategy, Strategy):
        legacy = type(strategy).__module__.startswith("flwr.server.strategy")
        raise ValueError(
            f"strategy= must be a Flower Message-API strategy "
            f"(flwr.serverapp.strategy.Strategy, e.g. FedAvg), not {kind}: "
            + (
                f"use flwr.serverapp.strategy.{type(strategy).__name__} (or subclass it) "
                "instead of the legacy flwr.server.strategy one"
                if legacy
                else "subclass flwr.serverapp.strategy.Strategy (or FedAvg) for it"
            )
        )
    # Strategy has no __slots__, so its object always takes instance attributes; a data
    # descriptor (a property) on the class would still win over them.
    fixed = [
        name
        for name in ROUTED
        if hasattr(type(inspect.getattr_static(type(strategy), name, None)), "__set__")
    ]
    if fixed and _overrides_start(strategy):
        raise ValueError(
            f"{kind} overrides start(), which runs with split learning routed into its "
            f"methods, but its {', '.join(fixed)} cannot be replaced on its object (a "
            "property or other data descriptor): define them as ordinary methods"
        )
    return strategy
