"""Multi-hop placement problem: one client's model over a chain of helpers.

A client keeps the head ``layers[:c1]`` and the tail ``layers[c2:]`` (U-shape, labels
stay on the client); the body ``layers[c1:c2]`` is split again into contiguous ranges run
by a chain of helpers ``client -> h_1 -> ... -> h_k -> client`` (``k >= 1``). Helpers are
*ordered*: a chain uses a subsequence of the listed helpers in their order (a multi-hop
route), and every hop needs a link. A batch of ``B`` samples is cut into micro-batches of
``b`` samples, ``M = ceil(B / b)`` of them, that flow through the chain pipelined.

Stages and their time per micro-batch (affine in ``b``: ``t(b) = a + c b``):

- compute of each node (the client once, for head and tail together; each helper for
  its range): ``a`` = the node's ``overhead_ms`` plus the range's fixed time per call
  (``call_ms``: what a layer's forward and backward cost whatever the samples), ``c`` =
  the range's forward + backward + update time per sample (profile time / profile batch
  size, less its fixed part). The client runs its head once on the whole batch, so the
  head's fixed time is charged once per batch (``call_ms / B`` per sample), the tail's per
  micro-batch;
- each link (unordered node pair) with the cuts it carries: per cut an activation
  forward and a gradient back of the same size, ``a = 2 latency_ms`` and
  ``c = 2 activation_kib_per_sample * 8.192 * byte_ratio / rate_mbps``. With one helper
  the client's link carries both cuts. ``byte_ratio`` is what the link's codecs send per
  raw (float32) byte, the activation's and the gradient's ratios averaged (1 without
  codecs; ``int8`` both ways: 1/4).

Pipeline latency of a batch (the objective, as in pipelined split learning in
multi-hop edge networks)::

    T = sum_s t_s(b) + (M - 1) max_s t_s(b)

Memory (MiB) of a range of layers on a node: ``sum(memory_kib - activation_kib +
activation_kib * B / B0) / 1024`` (``memory_kib`` from the profile: measured, or
``3 weights + activations``; ``B0`` the profile's batch size). Micro-batches do not change
it: all ``M`` micro-batches' activations are kept until their backward (GPipe schedule).
The client's head and tail must fit its ``memory_mib``, each helper's range its own.

The solver is :func:`flsplit.plan.multihop.optimize.optimize_placement`; the files
are read and written by :mod:`flsplit.plan.multihop.files`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flsplit.plan.instance import InstanceError

MULTIHOP_FORMAT = "flsplit-multihop"
MULTIHOP_PLAN_FORMAT = "flsplit-multihop-plan"
MULTIHOP_VERSION = 1

class MultihopError(InstanceError):
    """A multi-hop instance is invalid or has no feasible placement; ``field`` names the
    offending field (``helpers[2].memory_mib``, ``links[0].rate_mbps`` ...)."""


@dataclass
class MultihopProblem:
    """A client, ordered candidate helpers, their links and a model's layers.

    Node index 0 is the client, ``1 .. H`` the helpers in route order.

    Attributes
    ----------
    node_ids
        ``H + 1`` unique ids.
    sample_ms
        ``(H + 1) x L``: forward + backward + update time per sample of each layer (ms).
    runnable
        ``(H + 1) x L``: the node has profile data for the layer.
    overhead_ms
        Per-micro-batch fixed compute time of each node (``a`` of its stage).
    call_ms
        ``(H + 1) x L``: fixed time of one call (forward and backward) of each layer on
        each node (ms), paid by every micro-batch of a helper's range and the client's
        tail, once per batch by the client's head; ``None``: 0 (times purely per sample).
    duplex
        Links send both ways at once (as the runtime's: one transfer at a time in each
        direction): each link is two stages, what goes out and what comes back, half the
        link's time each; micro-batches then pipeline through a link at one direction's
        time. ``False``: one stage carrying both directions in turn.
    serial_head
        The client runs its head once on the whole batch, forward before the first
        micro-batch leaves and backward after the last returns (as the runtime's
        micro-batches do): the head's batch time is serial, outside the pipeline, and
        the client's stage per micro-batch is its tail. ``False``: head and tail one
        stage per micro-batch.
    return_along
        A chain's output returns to the client along the chain, as the runtime relays
        it: the last cut crosses every helper-helper hop back and the client's link to
        its first helper, which so carries both cuts; no link from the last helper to
        the client is used. ``False``: it returns over the last helper's own link. The
        exact placement (:func:`~flsplit.plan.multihop.placement.place`) searches chains
        of the ``False`` model and judges them with this one.
    memory_mib
        Memory of each node (MiB).
    layer_memory_mib
        Training memory of each layer at the batch size (MiB).
    activation_kib
        Activation (= gradient) size per sample after each layer (KiB).
    rate_mbps, latency_ms
        ``(H + 1) x (H + 1)`` symmetric link rates (0: no link) and latencies.
    batch_size
        Samples per batch ``B``.
    micro_batch
        A fixed micro-batch size, or ``None`` to optimise it.
    min_head, min_tail
        Fewest layers the client keeps in front and at the end (at least 1 each).
    name
        Free-form name.
    byte_ratio
        ``(H + 1) x (H + 1)`` symmetric: bytes a link sends per raw (float32) byte,
        ``(activation ratio + gradient ratio) / 2`` of its codecs
        (:attr:`flsplit.config.CodecSetting.byte_ratio`); ``None``: 1 everywhere (raw).
    """

    node_ids: list[str]
    sample_ms: np.ndarray
    runnable: np.ndarray
    overhead_ms: np.ndarray
    memory_mib: np.ndarray
    layer_memory_mib: np.ndarray
    activation_kib: np.ndarray
    rate_mbps: np.ndarray
    latency_ms: np.ndarray
    batch_size: int
    micro_batch: int | None = None
    min_head: int = 1
    min_tail: int = 1
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    byte_ratio: np.ndarray | None = None
    call_ms: np.ndarray | None = None
    duplex: bool = False
    serial_head: bool = False
    return_along: bool = False

    def __post_init__(self) -> None:
        self.sample_ms = np.asarray(self.sample_ms, dtype=float)
        self.runnable = np.asarray(self.runnable, dtype=bool)
        self.overhead_ms = np.asarray(self.overhead_ms, dtype=float)
        self.memory_mib = np.asarray(self.memory_mib, dtype=float)
        self.layer_memory_mib = np.asarray(self.layer_memory_mib, dtype=float)
        self.activation_kib = np.asarray(self.activation_kib, dtype=float)
        self.rate_mbps = np.asarray(self.rate_mbps, dtype=float)
        self.latency_ms = np.asarray(self.latency_ms, dtype=float)
        n, layers = len(self.node_ids), len(self.layer_memory_mib)
        self.byte_ratio = (np.ones((n, n)) if self.byte_ratio is None
                           else np.asarray(self.byte_ratio, dtype=float))
        self.call_ms = (np.zeros((n, layers)) if self.call_ms is None
                        else np.asarray(self.call_ms, dtype=float))
        if n < 2:
            raise MultihopError("helpers", "at least one helper is required")
        if len(set(self.node_ids)) != n:
            raise MultihopError("node_ids", "ids must be unique")
        checks = {"sample_ms": (n, layers), "runnable": (n, layers), "overhead_ms": (n,),
                  "memory_mib": (n,), "activation_kib": (layers,),
                  "rate_mbps": (n, n), "latency_ms": (n, n), "byte_ratio": (n, n),
                  "call_ms": (n, layers)}
        for name, shape in checks.items():
            value = getattr(self, name)
            if value.shape != shape:
                raise MultihopError(name, f"shape {list(value.shape)}, expected {list(shape)}")
            if name != "runnable" and (not np.isfinite(value).all() or (value < 0).any()):
                raise MultihopError(name, "values must be finite and non-negative")
        if not np.allclose(self.rate_mbps, self.rate_mbps.T) or not np.allclose(
                self.latency_ms, self.latency_ms.T):
            raise MultihopError("links", "rates and latencies must be symmetric")
        if (self.byte_ratio <= 0).any() or not np.allclose(self.byte_ratio,
                                                           self.byte_ratio.T):
            raise MultihopError("byte_ratio", "values must be positive and symmetric")
        if not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1:
            raise MultihopError("batch_size", f"expected a positive integer, got "
                                f"{self.batch_size!r}")
        if self.micro_batch is not None and not 1 <= int(self.micro_batch) <= self.batch_size:
            raise MultihopError("micro_batch", f"expected 1 .. batch_size "
                                f"({self.batch_size}), got {self.micro_batch!r}")
        for name in ("min_head", "min_tail"):
            if int(getattr(self, name)) < 1:
                raise MultihopError(name, "the client keeps at least one layer")
        if self.min_head + self.min_tail + 1 > layers:
            raise MultihopError("min_head", f"min_head + min_tail + 1 body layer exceed the "
                                f"{layers} layers")

    @property
    def num_layers(self) -> int:
        """Number of profiled layers ``L``."""
        return len(self.layer_memory_mib)

    @property
    def num_helpers(self) -> int:
        """Number of candidate helpers ``H``."""
        return len(self.node_ids) - 1

    @property
    def link_rate_mbps(self) -> np.ndarray:
        """``(H + 1) x (H + 1)``: each link's rate in raw (float32) bytes, ``rate_mbps /
        byte_ratio`` (0: no link): what its transfer times are computed with."""
        assert self.byte_ratio is not None  # set in __post_init__
        return self.rate_mbps / self.byte_ratio


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: time per micro-batch of ``b`` samples is ``a + c * b`` (ms).

    A ``serial`` stage is a time per batch outside the pipeline (``a``; the client's head
    with ``MultihopProblem.serial_head``): counted once, never the bottleneck.
    """

    name: str
    a: float
    c: float
    serial: bool = False

    def time(self, b: float) -> float:
        """Stage time (ms) for a micro-batch of ``b`` samples."""
        return self.a + self.c * b


@dataclass
class MultihopPlan:
    """A placement and micro-batch size with its pipeline latency.

    Attributes
    ----------
    chain
        Node ids along the route, client first and last.
    cuts
        ``k + 1`` cut positions ``c1 < x_1 < ... < c2``: helper ``i`` runs
        ``layers[cuts[i]:cuts[i + 1]]`` (0-based, stop exclusive).
    micro_batch, num_micro_batches
        ``b`` and ``M = ceil(B / b)``.
    latency_ms
        :func:`evaluate_placement`'s pipeline latency.
    stages
        ``(name, ms)`` of every stage at ``b``.
    memory_mib
        Node id -> memory its layers need.
    solve_time, iterations
        Seconds and number of shortest-path solves.
    """

    chain: list[str]
    cuts: list[int]
    micro_batch: int
    num_micro_batches: int
    latency_ms: float
    stages: list[tuple[str, float]]
    memory_mib: dict[str, float]
    solve_time: float = 0.0
    iterations: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def bottleneck(self) -> tuple[str, float]:
        """The largest stage ``(name, ms)``."""
        return max(self.stages, key=lambda s: s[1])

    def ranges(self) -> list[tuple[str, int, int]]:
        """``(node, start, stop)`` for the head, each helper and the tail (0-based)."""
        client = self.chain[0]
        rows = [(client, 0, self.cuts[0])]
        rows += [(h, self.cuts[i], self.cuts[i + 1]) for i, h in enumerate(self.chain[1:-1])]
        return [*rows, (client, self.cuts[-1], -1)]

    def to_dict(self) -> dict[str, Any]:
        """The plan JSON (``flsplit-multihop-plan``, version 1)."""
        return {
            "format": MULTIHOP_PLAN_FORMAT, "version": MULTIHOP_VERSION,
            "chain": self.chain, "cuts": self.cuts, "micro_batch": self.micro_batch,
            "num_micro_batches": self.num_micro_batches, "latency_ms": self.latency_ms,
            "bottleneck": list(self.bottleneck),
            "stages": [{"stage": n, "ms": t} for n, t in self.stages],
            "memory_mib": self.memory_mib, "solve_time_s": self.solve_time,
            "iterations": self.iterations, "info": self.info,
        }


def random_problem(num_layers: int, num_helpers: int, seed: int = 0, batch_size: int = 64,
                   memory_slack: float = 1.5, link_probability: float = 1.0
                   ) -> MultihopProblem:
    """A synthetic instance for tests and benchmarks.

    Per-sample layer times are uniform in ``[0.1, 1]`` ms scaled by a node speed in
    ``[0.2, 5]`` (the client is the slowest); activation 10-500 KiB per sample; links
    1-100 Mbit/s with 0-5 ms latency, each helper-helper link present with probability
    ``link_probability`` (consecutive helpers and client-helper links always); memory
    ``memory_slack`` times an equal share of the model for each helper, the client
    enough for about a quarter of the model.
    """
    rng = np.random.default_rng(seed)
    n = num_helpers + 1
    base = rng.uniform(0.1, 1.0, num_layers)
    speed = np.concatenate([[rng.uniform(3.0, 5.0)], rng.uniform(0.2, 2.0, num_helpers)])
    sample_ms = speed[:, None] * base[None, :] * rng.uniform(0.8, 1.2, (n, num_layers))
    layer_mem = rng.uniform(1.0, 100.0, num_layers)
    total = float(layer_mem.sum())
    memory = np.concatenate([[0.25 * total + layer_mem.max()],
                             rng.uniform(0.5, 1.0, num_helpers) * memory_slack * total
                             / max(num_helpers, 1) + layer_mem.max()])
    rate = np.zeros((n, n))
    latency = np.zeros((n, n))
    for u in range(n):
        for w in range(u + 1, n):
            present = u == 0 or w == u + 1 or rng.random() < link_probability
            if present:
                rate[u, w] = rate[w, u] = rng.uniform(1.0, 100.0)
                latency[u, w] = latency[w, u] = rng.uniform(0.0, 5.0)
    return MultihopProblem(
        node_ids=["client", *(f"h{i + 1}" for i in range(num_helpers))],
        sample_ms=sample_ms, runnable=np.ones((n, num_layers), dtype=bool),
        overhead_ms=rng.uniform(0.0, 20.0, n), memory_mib=memory,
        layer_memory_mib=layer_mem, activation_kib=rng.uniform(10.0, 500.0, num_layers),
        rate_mbps=rate, latency_ms=latency, batch_size=batch_size,
        name=f"random-L{num_layers}-H{num_helpers}-s{seed}",
    )
