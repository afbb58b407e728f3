"""Which nodes are helpers and which are clients, as they report at discovery.

The server sends every node it has not heard from a ``query.split`` message; the node
answers with its role, example count, data-plane addresses (helpers) and device
information. :class:`NodeGrid` then shows the wrapped Flower strategy the clients only,
so it never samples a helper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from flsplit.engine import engine_limit
from flsplit.protocol import CONFIG, QUERY, ROLE_CLIENT, ROLE_HELPER, NodeReport
from strategies.failures import SentMessages


class NodeGrid:
    """A view of a :class:`Grid` that exposes only some of its nodes.

    The wrapped strategy samples through it, so it only ever sees clients.

    Parameters
    ----------
    grid : Grid
        The run's grid; everything but :meth:`get_node_ids` goes to it.
    node_ids : callable
        Returns the ids to show (read at every call, so the view follows discovery).
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
    """What a node reported about itself at discovery.

    Attributes
    ----------
    node_id : int
    role : str
        ``client`` or ``helper``.
    examples : int
        Training examples (clients).
    address, listen_address : str
        Helpers: the data-plane address clients dial, and where it listens.
    report : NodeReport
        Everything it reported (device, compute factor, memory, ...).
    """

    node_id: int
    role: str
    examples: int = 0
    address: str = ""
    listen_address: str = ""
    report: NodeReport | None = None

    @property
    def compute_factor(self) -> float:
        """Times slower than the reference machine (1 when not reported)."""
        return self.report.compute_factor if self.report is not None else 1.0

    @property
    def memory_mib(self) -> float:
        """Memory of its device preset (unbounded when not reported)."""
        memory = self.report.memory_mib if self.report is not None else None
        return float(memory) if memory is not None else math.inf

    @property
    def index(self) -> int:
        """Its index within its role (data partition or helper number)."""
        return self.report.index if self.report is not None else 0

    @property
    def codecs(self) -> tuple[str | None, str | None]:
        """The codec spellings it reported, activations and gradients (a client: its
        data plane's; a helper: its node config's for its next hops; ``None``: none)."""
        if self.report is None:
            return None, None
        return self.report.activations_codec, self.report.gradients_codec

    @property
    def helper_links(self) -> frozenset[int] | None:
        """A helper: the helper indices its node config says it has a link with
        (``None``: not declared)."""
        links = self.report.helper_links if self.report is not None else None
        return None if links is None else frozenset(links)


def with_role(nodes: Mapping[int, NodeInfo], role: str) -> list[int]:
    """Sorted ids of the ``nodes`` that reported ``role``."""
    return sorted(n for n, info in nodes.items() if info.role == role)


def query_nodes(
    grid: Grid,
    nodes: MutableMapping[int, NodeInfo],
    node_ids: Sequence[int],
    timeout: float,
    failures: MutableMapping[int, str] | None = None,
    refuse: Callable[[NodeReport], str] | None = None,
) -> list[int]:
    """Bring ``nodes`` up to date with the connected ``node_ids``.

    Nodes that left are removed; nodes not in ``nodes`` yet are queried and added as
    they answer. A node that answers with an error is logged with the node's error text
    (once per distinct text: it is asked again at every call) and kept in ``failures``.

    Parameters
    ----------
    grid : Grid
        The run's grid.
    nodes : dict
        Node id -> :class:`NodeInfo`, updated in place.
    node_ids : sequence of int
        The ids of the connected nodes.
    timeout : float
        Seconds to wait for the answers.
    failures : dict, optional
        Node id -> the error text of its last discovery reply, updated in place: a node
        is removed once it answers properly or leaves.
    refuse : callable, optional
        ``refuse(report)``: why a node that answered is refused (``""``: it is not); a
        refused node counts as failed discovery, and is asked again at the next call.

    Returns
    -------
    list of int
        The new nodes that did not answer in time or answered with an error (to be asked
        again later).
    """
    failures = {} if failures is None else failures
    new = [n for n in node_ids if n not in nodes]
    for gone in set(nodes) - set(node_ids):
        log(WARNING, "node %d left; it is planned out", gone)
        del nodes[gone]
    for gone in set(failures) - set(node_ids):
        del failures[gone]
    failed = set()
    if new:
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=n, message_type=QUERY)
            for n in new
        ]
        sent = SentMessages(messages)
        for reply in grid.send_and_receive(messages, timeout=timeout):
            # the node asked, not the sender: the SuperLink answers for a node it cannot reach
            src = sent.node_of(reply)
            if reply.has_error():
                text = sent.error_cause(reply)
                if failures.get(src) != text:
                    log(ERROR, "node %d failed discovery: %s", src, text)
                failures[src] = text
                failed.add(src)
                continue
            info = _node_info(src, reply)
            cause = refuse(info.report) if refuse is not None and info.report else ""
            if cause:
                if failures.get(src) != cause:
                    log(ERROR, "node %d refused at discovery: %s", src, cause)
                failures[src] = cause
                failed.add(src)
                continue
            failures.pop(src, None)
            nodes[src] = info
    unanswered = sorted(set(new) - set(nodes))
    silent = [n for n in unanswered if n not in failed]
    if silent:
        log(
            WARNING,
            "%d nodes did not answer discovery within %.0f s; asking them again later",
            len(silent),
            timeout,
        )
    return unanswered


def failure_summary(failures: Mapping[int, str], most: int = 3) -> str:
    """``failures`` for an error message: the first ``most`` nodes' error texts."""
    if not failures:
        return ""
    shown = "; ".join(f"node {n}: {failures[n]}" for n in sorted(failures)[:most])
    more = f"; and {len(failures) - most} more" if len(failures) > most else ""
    nodes = f"{len(failures)} node" + ("s" if len(failures) > 1 else "")
    return f"{nodes} answered discovery with an error ({shown}{more})"


def _node_info(node_id: int, reply: Message) -> NodeInfo:
    report = NodeReport.from_content(reply.content)
    return NodeInfo(
        node_id=node_id,
        role=report.role,
        examples=report.examples,
        address=report.address,
        listen_address=report.listen_address,
        report=report,
    )


def log_roles(nodes: Mapping[int, NodeInfo]) -> None:
    """Log how many clients and which helpers (with their addresses) are known."""
    helpers = with_role(nodes, ROLE_HELPER)
    log(
        INFO,
        "discovery: %d clients, %d helpers (%s)",
        len(with_role(nodes, ROLE_CLIENT)),
        len(helpers),
        ", ".join(f"{h}@{nodes[h].address}" for h in helpers),
    )


def check_roles(nodes: Mapping[int, NodeInfo], num_helpers: int) -> None:
    """Refuse a simulation in which every node is a helper, naming the setting to change.

    In simulation all virtual nodes answer discovery at once and the first
    ``num-helpers`` of them are helpers, so none left to be a client is a setting, not a
    node still starting (in deployment a helper may start before its clients: nothing is
    refused there).

    Raises
    ------
    RuntimeError
        If every node is a simulated helper.
    """
    simulated = [n for n in nodes.values() if n.report and n.report.simulation_concurrency]
    if not nodes or len(simulated) < len(nodes) or with_role(nodes, ROLE_CLIENT):
        return
    message = (
        f"all {len(nodes)} simulated nodes are helpers: run config num-helpers={num_helpers} "
        "leaves no node to be a client; lower num-helpers, or start more nodes (flwr run "
        "--federation-config 'num-supernodes=<num-helpers + clients>', or num-clients with "
        "flsplit simulate)"
    )
    log(ERROR, message)
    raise RuntimeError(message)


def check_concurrency(nodes: Mapping[int, NodeInfo]) -> None:
    """Refuse a simulation that cannot run every helper and a client at once.

    The nodes report what the Ray backend runs at once; the engine's own limit
    (:func:`flsplit.engine.engine_limit`, lifted by flsplit's ClientApp) is known here,
    since the ServerApp runs in the simulation engine's process.

    Raises
    ------
    RuntimeError
        If fewer than the number of helpers + 1 ClientApp calls can run at once.
    """
    reported = [
        n.report.simulation_concurrency
        for n in nodes.values()
        if n.report is not None and n.report.simulation_concurrency is not None
    ]
    if not reported:
        return
    helpers = len(with_role(nodes, ROLE_HELPER))
    backend = min(reported)
    engine = engine_limit()
    if min(backend, engine or backend) >= helpers + 1:
        return
    if engine is not None and engine < backend:
        message = (
            f"Flower's simulation engine runs {engine} ClientApp calls at once "
            "(min(32, cpus + 4)) and flsplit could not lift that limit in this process "
            f"(the ClientApp was built before the engine was imported), but {helpers} "
            "helpers (each busy for the whole round) plus at least one client must run "
            "together: lower num-helpers, or build the ClientApp after importing "
            "flwr.simulation"
        )
    else:
        message = (
            f"the simulation backend runs {backend} ClientApp calls at once, but "
            f"{helpers} helpers (each busy for the whole round) plus at least "
            "one client must run together: give each virtual node a smaller CPU share, "
            "e.g. flwr run --federation-config 'client-resources-num-cpus=1 "
            "init-args-num-cpus=<num-supernodes>' (flsplit simulate sizes it so)"
        )
    log(ERROR, message)
    raise RuntimeError(message)


def clients_needed(strategy: Strategy, stage: str) -> int:
    """Fewest clients the wrapped ``strategy`` waits for at ``stage`` (0: it skips it).

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy (its ``min_available_nodes`` and ``min_<stage>_nodes`` count
        when it has them).
    stage : str
        ``"train"`` or ``"evaluate"``.
    """
    if stage == "evaluate" and getattr(strategy, "fraction_evaluate", 1.0) == 0:
        return 0  # no federated evaluation: nobody to wait for
    return max(
        1,
        int(getattr(strategy, "min_available_nodes", 1)),
        int(getattr(strategy, f"min_{stage}_nodes", 1)),
    )


def wait_for(
    discover: Callable[[], None],
    count: Callable[[], int],
    needed: int,
    timeout: float,
    too_few: Callable[[], str],
) -> None:
    """Call ``discover`` until ``count()`` reaches ``needed``, within ``timeout`` seconds.

    ``discover`` runs at least once, even when nothing is needed, so the node list is
    current.

    Raises
    ------
    RuntimeError
        With ``too_few()`` as the message, once the deadline has passed.
    """
    deadline = time.monotonic() + timeout
    discover()
    if needed <= 0:
        return
    while count() < needed:
        if time.monotonic() > deadline:
            message = too_few()
            log(ERROR, message)
            raise RuntimeError(message)
        time.sleep(1.0)
        discover()
