"""Many clients sharing helpers: the multi-client chain problem and its plan.

Each client ``k`` is a single-client :class:`~flsplit.plan.multihop.problem.MultihopProblem`
(node 0 = the client, ``1 .. H`` = the shared helpers in route order); the clients share
the helpers' memory and compute. A client's route is a subsequence of the helpers in
route order (links permitting), its body is cut into one contiguous range per hop, and
its batch into ``M`` micro-batches. Each helper runs its tasks (one per client and
micro-batch it serves) one at a time, in the plan's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flsplit.plan.multihop.problem import MultihopError, MultihopProblem, random_problem

#: A helper task: ``(client index, micro-batch index)``.
ChainTask = tuple[int, int]


@dataclass
class ChainProblem:
    """Clients, each a single-client problem over the same ordered helpers.

    Attributes
    ----------
    clients
        One :class:`MultihopProblem` per client; node 0 is the client, nodes ``1 .. H``
        the helpers (same ids, memory and helper-helper links in every client).
    name
        Free-form name.
    """

    clients: list[MultihopProblem]
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.clients:
            raise MultihopError("clients", "at least one client is required")
        first = self.clients[0]
        ids = [p.node_ids[0] for p in self.clients]
        if len(set(ids)) != len(ids) or set(ids) & set(first.node_ids[1:]):
            raise MultihopError("clients", "client ids must be unique and differ from "
                                "helper ids")
        for k, p in enumerate(self.clients[1:], start=1):
            if p.node_ids[1:] != first.node_ids[1:]:
                raise MultihopError(f"clients[{k}]", "helpers differ from client 0's")
            if p.num_layers != first.num_layers:
                raise MultihopError(f"clients[{k}]", "layer count differs from client 0's")
            if not np.allclose(p.memory_mib[1:], first.memory_mib[1:]):
                raise MultihopError(f"clients[{k}]", "helper memory differs from client 0's")
            if not (np.allclose(p.rate_mbps[1:, 1:], first.rate_mbps[1:, 1:])
                    and np.allclose(p.latency_ms[1:, 1:], first.latency_ms[1:, 1:])):
                raise MultihopError(f"clients[{k}]", "helper-helper links differ from "
                                    "client 0's")

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return len(self.clients)

    @property
    def num_helpers(self) -> int:
        """Number of helpers ``H``."""
        return self.clients[0].num_helpers

    @property
    def helper_ids(self) -> list[str]:
        """Helper ids in route order."""
        return list(self.clients[0].node_ids[1:])

    @property
    def client_ids(self) -> list[str]:
        """Client ids."""
        return [p.node_ids[0] for p in self.clients]

    @property
    def helper_memory_mib(self) -> np.ndarray:
        """Memory of each helper (MiB)."""
        return self.clients[0].memory_mib[1:]


@dataclass(frozen=True)
class ChainRoute:
    """One client's chain: helper indices (1-based, increasing), cuts, micro-batch size.

    ``cuts`` has ``len(helpers) + 1`` positions; helper ``helpers[i]`` runs
    ``layers[cuts[i]:cuts[i + 1]]``; the client keeps ``layers[:cuts[0]]`` and
    ``layers[cuts[-1]:]``.
    """

    helpers: tuple[int, ...]
    cuts: tuple[int, ...]
    micro_batch: int


@dataclass
class ChainPlan:
    """Routes of every client and each helper's task order, with the judged makespan.

    Attributes
    ----------
    routes
        One :class:`ChainRoute` per client.
    orders
        Helper index (1-based) -> its tasks ``(client, micro-batch)`` in run order;
        a client's micro-batches appear in increasing order.
    makespan
        :func:`~flsplit.plan.multihop.chain_evaluation.evaluate_chain`'s round makespan
        (ms), once judged.
    lower_bound
        A lower bound on the optimal makespan (ms), if computed.
    """

    routes: list[ChainRoute]
    orders: dict[int, list[ChainTask]]
    makespan: float | None = None
    lower_bound: float | None = None
    method: str = ""
    solve_time: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """``makespan / lower_bound - 1``, when both are known."""
        if self.makespan is None or not self.lower_bound:
            return None
        return self.makespan / self.lower_bound - 1.0

    def to_dict(self, problem: ChainProblem) -> dict[str, Any]:
        """The plan JSON (``flsplit-chain-plan``, version 1)."""
        hids, cids = problem.helper_ids, problem.client_ids
        return {
            "format": "flsplit-chain-plan", "version": 1, "method": self.method,
            "makespan_ms": self.makespan, "lower_bound_ms": self.lower_bound,
            "gap": self.gap, "solve_time_s": self.solve_time,
            "clients": [{"id": cids[k], "chain": [cids[k], *(hids[v - 1] for v in r.helpers),
                                                   cids[k]],
                         "cuts": list(r.cuts), "micro_batch": r.micro_batch}
                        for k, r in enumerate(self.routes)],
            "orders": {hids[v - 1]: [[cids[k], m] for k, m in tasks]
                       for v, tasks in sorted(self.orders.items())},
            "info": self.info,
        }


def random_chain_problem(num_clients: int, num_layers: int, num_helpers: int, seed: int = 0,
                         batch_size: int = 16, memory_slack: float = 1.5,
                         link_probability: float = 1.0) -> ChainProblem:
    """A synthetic multi-client instance for tests: the helpers (compute, memory,
    helper-helper links) of :func:`random_problem` at ``seed``, each client its own
    device, memory and client-helper links (seed ``seed + 1 + k``); helper memory is
    times the number of clients (``memory_slack`` = 1.5: half again the
    clients' models over all helpers)."""
    base = random_problem(num_layers, num_helpers, seed=seed, batch_size=batch_size,
                          memory_slack=memory_slack, link_probability=link_probability)
    clients = []
    for k in range(num_clients):
        own = random_problem(num_layers, num_helpers, seed=seed + 1 + k,
                             batch_size=batch_size)
        p = MultihopProblem(
            node_ids=[f"c{k + 1}", *base.node_ids[1:]],
            sample_ms=np.vstack([own.sample_ms[:1], base.sample_ms[1:]]),
            runnable=np.ones_like(base.runnable),
            overhead_ms=np.concatenate([own.overhead_ms[:1], base.overhead_ms[1:]]),
            memory_mib=np.concatenate([[base.memory_mib[0]], base.memory_mib[1:]]),
            layer_memory_mib=base.layer_memory_mib, activation_kib=base.activation_kib,
            rate_mbps=base.rate_mbps.copy(), latency_ms=base.latency_ms.copy(),
            batch_size=batch_size,
        )
        p.rate_mbps[0, :] = p.rate_mbps[:, 0] = np.r_[0.0, own.rate_mbps[0, 1:]]
        p.latency_ms[0, :] = p.latency_ms[:, 0] = np.r_[0.0, own.latency_ms[0, 1:]]
        clients.append(p)
    # shared helpers: their memory must hold bodies of several clients
    for p in clients:
        p.memory_mib[1:] = base.memory_mib[1:] * num_clients
    return ChainProblem(clients, name=f"random-K{num_clients}-L{num_layers}-H{num_helpers}"
                        f"-s{seed}")
