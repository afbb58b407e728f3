"""The round protocol between the server, clients and helpers, in one place.

Every Flower message flsplit's roles exchange once per round is built and read here:
its message type, the names of the records it carries and the keys inside them. The
server writes with ``to_*`` and a node reads with ``from_*`` of the same dataclass, so
a key is spelled once. (The data plane, one frame per batch between a client and its
helper, is :mod:`flsplit.runtime.wire`.)

One round (README, "How a round runs"):

========================  ==============  =================================================
message type              to              content
========================  ==============  =================================================
``query.split``           every new node  nothing; the reply is a :class:`NodeReport`
``train.helper``          each helper     ``arrays``: the body pieces it runs;
                                          ``config``: a :class:`HelperRound` over the
                                          run config
``train.split``           each client     ``arrays``: its head and tail; ``config``: a
                                          :class:`ClientRound` over the wrapped
                                          strategy's config
========================  ==============  =================================================

A client replies with its head and tail (``arrays``) and a :class:`ClientResult`
(``metrics``); a helper with one ``body.<client>`` record per client that finished and a
:class:`HelperResult` (``metrics``, ``config``, ``timeline``).

With a frozen base (:mod:`flsplit.model.frozen`) the train configs name its hash
(``BASE_HASH``), ``arrays`` carry its tensors only until the node confirmed holding them,
replies leave them out and name the base the node holds (a ``BASE`` record).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

# -- message types ------------------------------------------------------------------
#: The action names a ClientApp registers (``@app.query(SPLIT_ACTION)``, ...); Flower
#: routes ``<kind>.<action>`` message types to them.
SPLIT_ACTION = "split"
HELPER_ACTION = "helper"
QUERY = f"query.{SPLIT_ACTION}"
CLIENT_TRAIN = f"train.{SPLIT_ACTION}"
HELPER_TRAIN = f"train.{HELPER_ACTION}"

ROLE_CLIENT = "client"
ROLE_HELPER = "helper"
ROLES = (ROLE_CLIENT, ROLE_HELPER)

# -- record names ---------------------------------------------------------------------
ARRAYS = "arrays"
#: data-plane bytes a client sent to and received from its helper in a round (its
#: train metrics, ``history.json``'s ``data-plane-bytes`` and ``round-N.json``)
BYTES_UP, BYTES_DOWN = "bytes-up", "bytes-down"
DATA_PLANE_BYTES = "data-plane-bytes"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"
TIMELINE = "timeline"
_BODY_PREFIX = "body."

# -- metric keys Flower's strategies read (FedAvg weighs updates by NUM_EXAMPLES) ------
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
EVAL_LOSS = "eval_loss"
EVAL_ACC = "eval_acc"
TEST_LOSS = "test_loss"
TEST_ACC = "test_acc"
#: the test accuracy of the split model with the activations' codec at its cuts
TEST_ACC_CODED = "test_acc_coded"
#: The run-config key the server pins in every train config: ``split`` or ``fedavg``.
MODE = "mode"
#: The round number Flower's strategies put in every train and evaluate config.
SERVER_ROUND = "server-round"
#: Added by the strategy to the round's aggregated train metrics.
ROUND_WALL_SECONDS = "round-wall-seconds"

#: The frozen base's hash (:func:`flsplit.model.frozen.base_hash`): the server's in every
#: train message's config, the one a node holds in its replies' ``BASE`` record.
BASE_HASH = "base-hash"
#: A helper's discovery reply: the helpers its node config says it has a link with
#: (comma-separated indices; a ConfigRecord cannot hold an empty list).
REACHED_HELPERS = "reached-helpers"
#: Reply record (a ConfigRecord) naming the frozen base the node holds.
BASE = "base"
#: A node's ``Context.state`` records: the frozen base tensors it received this run
#: (ArrayRecord) and the hash of the base they belong to (ConfigRecord).
BASE_CACHE = "flsplit.base"
BASE_CACHE_INFO = "flsplit.base-info"

#: A synchronous-step schedule's keys in a train config (:func:`pack_schedule`).
SCHEDULE_SHAPE = "schedule-shape"
SCHEDULE_COUNTS = "schedule-counts"

#: The two tasks a helper runs per batch of a client.
FORWARD = "fwd"
BACKWARD = "bwd"
TASK_KINDS = (FORWARD, BACKWARD)


class ProtocolError(ValueError):
    """A message that does not follow the protocol (missing or malformed key)."""


def body_record(client: int | str) -> str:
    """Name of the record holding the body a helper trained for ``client``."""
    return f"{_BODY_PREFIX}{client}"


def body_owner(name: str) -> int | None:
    """The client a :func:`body_record` name belongs to, or ``None`` for other records."""
    if not name.startswith(_BODY_PREFIX):
        return None
    try:
        return int(name.removeprefix(_BODY_PREFIX))
    except ValueError:
        raise ProtocolError(f"record {name!r} does not name a client") from None


def _get(record: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in record:
        raise ProtocolError(f"{where} lacks {key!r}")
    return record[key]


# -- discovery ------------------------------------------------------------------------


@dataclass
class NodeReport:
    """What a node answers to ``query.split``.

    Attributes
    ----------
    role : str
        ``client`` or ``helper``.
    index : int
        Its index within its role (data partition or helper number).
    examples : int
        Training examples (clients).
    device : str
        Device preset it runs as, or the machine's architecture.
    compute_device : str
        Where torch computes on it (``cpu``, ``cuda:0``, ...).
    cpus, torch_threads : int
        The node's cores and torch's threads.
    compute_factor : float
        Times slower than the reference machine (1 unless it runs a preset).
    memory_mib : float, optional
        Memory of its preset.
    address, listen_address : str
        Helpers: the data-plane address clients dial, and where it listens.
    simulation_concurrency : int, optional
        ClientApp calls the simulation's Ray backend runs at once (simulation only).
    base_hash : str
        The frozen base the node holds for the run (``""``: none yet).
    activations_codec, gradients_codec : str, optional
        A client: the codecs its data plane uses (its node config's
        ``compress-activations`` / ``compress-gradients``, else the run config's). A
        helper: the codecs its node config sets for the links to its next hops in helper
        chains (``None``: the client's). Codec spellings (``"int8"``).
    helper_links : list of int, optional
        A helper: the helper indices its node config ``helper-links`` says it has a link
        with (``None``: not declared, every helper the run config allows).
    """

    role: str
    index: int = 0
    examples: int = 0
    device: str = ""
    compute_device: str = "cpu"
    cpus: int = 1
    torch_threads: int = 1
    compute_factor: float = 1.0
    memory_mib: float | None = None
    address: str = ""
    listen_address: str = ""
    simulation_concurrency: int | None = None
    base_hash: str = ""
    activations_codec: str | None = None
    gradients_codec: str | None = None
    helper_links: list[int] | None = None

    _KEYS = {
        "role": "role",
        "index": "index",
        "device": "device",
        "compute_device": "compute-device",
        "cpus": "cpus",
        "torch_threads": "torch-threads",
        "compute_factor": "compute-factor",
        "memory_mib": "memory-mib",
        "address": "address",
        "listen_address": "listen-address",
        "simulation_concurrency": "simulation-concurrency",
        "base_hash": BASE_HASH,
        "activations_codec": "codec-activations",
        "gradients_codec": "codec-gradients",
        "helper_links": REACHED_HELPERS,
    }

    def to_content(self) -> RecordDict:
        """The reply's content."""
        info = {
            key: getattr(self, name)
            for name, key in self._KEYS.items()
            if getattr(self, name) is not None
        }
        if self.helper_links is not None:
            info[REACHED_HELPERS] = ",".join(str(int(h)) for h in sorted(self.helper_links))
        return RecordDict(
            {INFO: ConfigRecord(info), METRICS: MetricRecord({NUM_EXAMPLES: self.examples})}
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> NodeReport:
        """Read a reply written by :meth:`to_content`."""
        info = dict(_get(content.config_records, INFO, "discovery reply"))
        metrics = _get(content.metric_records, METRICS, "discovery reply")
        role = str(_get(info, "role", "discovery reply"))
        if role not in ROLES:
            raise ProtocolError(f"discovery reply: role {role!r} is not one of {ROLES}")
        values: dict[str, Any] = {
            name: info[key] for name, key in cls._KEYS.items() if key in info
        }
        values["role"] = role
        values["examples"] = int(_get(metrics, NUM_EXAMPLES, "discovery reply"))
        if "helper_links" in values:
            try:
                values["helper_links"] = sorted(
                    {int(h) for h in str(values["helper_links"]).split(",") if h.strip()})
            except ValueError:
                raise ProtocolError(f"discovery reply: {REACHED_HELPERS} "
                                    f"{values['helper_links']!r} is not helper indices") from None
        return cls(**values)


# -- a helper's round -----------------------------------------------------------------


@dataclass(frozen=True)
class HelperTask:
    """One task in a helper's planned order: a client's forward or backward."""

    client: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ProtocolError(f"task kind {self.kind!r} is not one of {TASK_KINDS}")

    def encode(self) -> str:
        """``client:kind``, as a ``ConfigRecord`` list holds it."""
        return f"{self.client}:{self.kind}"

    @classmethod
    def decode(cls, text: str) -> HelperTask:
        """Read back :meth:`encode`."""
        client, sep, kind = str(text).rpartition(":")
        if not sep or not client:
            raise ProtocolError(f"helper order item {text!r} is not 'client:kind'")
        return cls(client, kind)


def pack_schedule(counts: np.ndarray) -> dict[str, list[int]]:
    """Turn a ``(steps, clients)`` schedule into lists a Flower ``ConfigRecord`` holds.

    Parameters
    ----------
    counts : np.ndarray
        Non-negative integer counts.

    Returns
    -------
    dict
        ``{"schedule-shape": [steps, clients], "schedule-counts": row-major counts}``.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ValueError("counts must be a 2-D array of non-negative integers")
    return {
        SCHEDULE_SHAPE: [int(d) for d in counts.shape],
        SCHEDULE_COUNTS: [int(c) for c in counts.ravel()],
    }


def unpack_schedule(record: Mapping[str, Any]) -> np.ndarray:
    """Read back a schedule written by :func:`pack_schedule`, checking it.

    Parameters
    ----------
    record : Mapping
        Holds ``schedule-shape`` and ``schedule-counts``.

    Returns
    -------
    np.ndarray
        ``(steps, clients)`` int64 counts.

    Raises
    ------
    ValueError
        Naming the missing or malformed key.
    """
    for key in (SCHEDULE_SHAPE, SCHEDULE_COUNTS):
        if key not in record:
            raise ValueError(f"{key} is missing")
    shape = [int(d) for d in record[SCHEDULE_SHAPE]]
    if len(shape) != 2 or min(shape) < 0:
        raise ValueError(f"schedule-shape must be [steps, clients], got {shape}")
    flat = np.asarray(record[SCHEDULE_COUNTS], dtype=np.int64)
    if flat.shape != (shape[0] * shape[1],) or np.any(flat < 0):
        raise ValueError(
            f"schedule-counts must hold {shape[0] * shape[1]} non-negative integers, "
            f"got {flat.size}"
        )
    return flat.reshape(shape)


def has_schedule(record: Mapping[str, Any]) -> bool:
    """Whether a train message carries a synchronous-step schedule (global sampling)."""
    return SCHEDULE_COUNTS in record


#: ``train.helper`` config: per served client, the emulated link (rate Mbit/s, latency
#: ms) from this helper to the next helper of the client's chain.
NEXT_LINK_MBPS = "client-next-link-mbps"
NEXT_LINK_LATENCY_MS = "client-next-link-latency-ms"


@dataclass(frozen=True)
class ServedClient:
    """One client a helper serves this round, and where its chain goes on.

    Attributes
    ----------
    client : str
        The client's node id.
    cuts : str
        The client's outer cut pair.
    piece : int
        Which body piece of the client's chain this helper runs (1 = first).
    next_address, next_token : str
        The next helper of the chain and the client's token for it; empty when this
        helper is the chain's last.
    micro_batches : int
        Micro-batches per batch the client sends (a planned chain's; 0: the run
        config's ``micro-batches``).
    next_link_mbps, next_link_latency_ms : float
        The emulated link to the next helper (run config ``helper-link-mbps``,
        ``helper-link-latency-ms`` with ``emulate``); rate 0: no rate emulated.
    """

    client: str
    cuts: str
    piece: int = 1
    next_address: str = ""
    next_token: str = ""
    micro_batches: int = 0
    next_link_mbps: float = 0.0
    next_link_latency_ms: float = 0.0


@dataclass
class HelperRound:
    """The ``config`` of a ``train.helper`` message (besides the run config).

    Attributes
    ----------
    server_round : int
    clients : list of ServedClient
    token_key : bytes
        The key the helper checks its clients' round tokens with.
    listen_address : str
        Where to serve the data plane (what the helper reported at discovery).
    round_timeout : float
        Seconds to wait for the clients.
    order : list of HelperTask
        Planned priority order (empty: first come first served).
    schedule : np.ndarray, optional
        Global sampling: ``(steps, clients)`` samples per step of each served client.
    client_parts : str
        Global sampling: ``shared`` or ``local`` head and tail.
    """

    server_round: int
    clients: list[ServedClient]
    token_key: bytes
    listen_address: str
    round_timeout: float
    order: list[HelperTask] = field(default_factory=list)
    schedule: np.ndarray | None = None
    client_parts: str = "shared"
    base_hash: str = ""

    def to_config(self, run_config: Mapping[str, Any]) -> ConfigRecord:
        """The message's ``config``: ``run_config`` with this round's keys over it."""
        config = ConfigRecord(
            {
                **dict(run_config),
                SERVER_ROUND: int(self.server_round),
                "clients": [c.client for c in self.clients],
                "client-cuts": [c.cuts for c in self.clients],
                "client-piece": [int(c.piece) for c in self.clients],
                "client-next": [c.next_address for c in self.clients],
                "client-next-token": [c.next_token for c in self.clients],
                "client-micro-batches": [int(c.micro_batches) for c in self.clients],
                NEXT_LINK_MBPS: [float(c.next_link_mbps) for c in self.clients],
                NEXT_LINK_LATENCY_MS: [float(c.next_link_latency_ms) for c in self.clients],
                "token-key": bytes(self.token_key),
                "order": [task.encode() for task in self.order],
                "listen-address": self.listen_address,
                "round-timeout": float(self.round_timeout),
                "client-parts": self.client_parts,
            }
        )
        if self.base_hash:  # a frozen base only
            config[BASE_HASH] = self.base_hash
        if self.schedule is not None:
            config.update(pack_schedule(self.schedule))
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HelperRound:
        """Read a ``train.helper`` config written by :meth:`to_config`."""
        where = "train.helper config"
        clients = [str(c) for c in _get(config, "clients", where)]
        columns = [
            list(_get(config, key, where))
            for key in ("client-cuts", "client-piece", "client-next", "client-next-token",
                        "client-micro-batches", NEXT_LINK_MBPS, NEXT_LINK_LATENCY_MS)
        ]
        if any(len(column) != len(clients) for column in columns):
            raise ProtocolError(f"{where}: per-client lists of unequal length")
        served = [
            ServedClient(client, str(cuts), int(piece), str(nxt), str(token), int(micro),
                         float(rate), float(latency))
            for client, cuts, piece, nxt, token, micro, rate, latency
            in zip(clients, *columns, strict=True)
        ]
        for entry in served:
            link = (entry.next_link_mbps, entry.next_link_latency_ms)
            if not all(math.isfinite(v) and v >= 0 for v in link):
                raise ProtocolError(f"{where}: next-hop link {link} of client "
                                    f"{entry.client} is not a rate and latency >= 0")
        return cls(
            server_round=int(_get(config, SERVER_ROUND, where)),
            clients=served,
            token_key=bytes(_get(config, "token-key", where)),
            listen_address=str(_get(config, "listen-address", where)),
            round_timeout=float(_get(config, "round-timeout", where)),
            order=[HelperTask.decode(item) for item in _get(config, "order", where)],
            schedule=unpack_schedule(config) if has_schedule(config) else None,
            client_parts=str(_get(config, "client-parts", where)),
            base_hash=str(config.get(BASE_HASH, "")),
        )


# -- a client's round -----------------------------------------------------------------

# Not the run config's link-mbps (a mix the server draws every pair's rate from): the
# rate drawn for this client and its helper.
_LINK_MBPS = "emulated-link-mbps"
_LINK_LATENCY_MS = "emulated-link-latency-ms"
# Not the run config's micro-batches: the count the planner chose for this client's chain.
_ROUND_MICRO_BATCHES = "round-micro-batches"


@dataclass
class ClientRound:
    """The ``config`` of a ``train.split`` message (besides the wrapped strategy's).

    Attributes
    ----------
    cuts : str
        The client's cut pair this round.
    helper_address : str
        Its (first) helper's data-plane address.
    round_token : str
        Its token for that helper, this round.
    server_round : int
        The round (Flower's ``server-round`` key).
    link_mbps, link_latency_ms : float, optional
        The emulated link to its helper (emulation with a planner), else ``None``.
    schedule : np.ndarray, optional
        Global sampling: ``(steps, 1)`` samples of this client per synchronous step.
    sample_offset : int
        Global sampling: samples it drew in earlier rounds.
    client_parts : str
        Global sampling: ``shared`` or ``local`` head and tail.
    micro_batches : int
        Micro-batches per batch through its chain (a planned chain's; 0: the run
        config's ``micro-batches``).
    """

    cuts: str
    helper_address: str
    round_token: str
    server_round: int = 0
    link_mbps: float | None = None
    link_latency_ms: float | None = None
    schedule: np.ndarray | None = None
    sample_offset: int = 0
    client_parts: str = "shared"
    base_hash: str = ""
    micro_batches: int = 0

    def to_config(self, inner: Mapping[str, Any]) -> ConfigRecord:
        """The message's ``config``: the wrapped strategy's ``inner`` config and this
        round's keys over it."""
        config = ConfigRecord(
            {
                **dict(inner),
                "cuts": self.cuts,
                "helper-address": self.helper_address,
                "round-token": self.round_token,
                SERVER_ROUND: int(self.server_round),
                "sample-offset": int(self.sample_offset),
                "client-parts": self.client_parts,
            }
        )
        if self.base_hash:  # a frozen base only
            config[BASE_HASH] = self.base_hash
        if self.micro_batches:  # a planned chain only
            config[_ROUND_MICRO_BATCHES] = int(self.micro_batches)
        if self.link_mbps is not None:
            config[_LINK_MBPS] = float(self.link_mbps)
            config[_LINK_LATENCY_MS] = float(self.link_latency_ms or 0.0)
        if self.schedule is not None:
            config.update(pack_schedule(self.schedule))
        return config

    @property
    def link(self) -> tuple[float, float] | None:
        """``(rate Mbit/s, latency ms)`` of the emulated link, or ``None``."""
        if self.link_mbps is None:
            return None
        return float(self.link_mbps), float(self.link_latency_ms or 0.0)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClientRound:
        """Read a ``train.split`` config written by :meth:`to_config`."""
        where = "train.split config"
        schedule = unpack_schedule(config) if has_schedule(config) else None
        if schedule is not None and schedule.shape[1] != 1:
            raise ProtocolError(f"schedule of shape {schedule.shape} is not one column")
        emulated = _LINK_MBPS in config
        return cls(
            cuts=str(_get(config, "cuts", where)),
            helper_address=str(_get(config, "helper-address", where)),
            round_token=str(_get(config, "round-token", where)),
            server_round=int(_get(config, SERVER_ROUND, where)),
            link_mbps=float(config[_LINK_MBPS]) if emulated else None,
            link_latency_ms=float(config.get(_LINK_LATENCY_MS, 0.0)) if emulated else None,
            schedule=schedule,
            sample_offset=int(_get(config, "sample-offset", where)),
            client_parts=str(_get(config, "client-parts", where)),
            base_hash=str(config.get(BASE_HASH, "")),
            micro_batches=int(config.get(_ROUND_MICRO_BATCHES, 0)),
        )


# -- replies --------------------------------------------------------------------------


@dataclass
class ClientResult:
    """A client's train metrics: Flower's (examples, loss, accuracy) and its measured
    stage times, which the planner learns from.

    Attributes
    ----------
    examples : int
    loss, accuracy : float
    batches : int
    stage1_ms, stage3_ms, stage5_ms : float
        Mean per batch: head forward + upload; download + tail + upload; download + head
        backward (network time included, the helper's service time not). This and the
        other means per batch are of the steady state: with two batches or more the first
        batch and the time before it are left out (a process's first round pays its
        imports and first calls there).
    helper_service_ms : float
        Mean per batch of the time the helper spent on the client's tasks.
    started, ended : float
        Wall-clock seconds of the first batch's start and the last one's end.
    load_ms : float
        Mean per batch of the time spent getting the batches from the client's data
        loader: outside the stages, before each batch's stage 1 (its own training loop:
        everything it does between one batch's stage 5 and the next batch's head
        forward). The planner adds it to the client's stage 1; a client that does not
        report it (an older flsplit) counts as loading for free.
    bytes_up, bytes_down : int
        Data-plane bytes the client sent to and received from its (first) helper this
        round: every frame, headers included, after compression (run config
        ``compress-activations``, ``compress-gradients``).
    steady_batch_ms : float
        Wall time per batch from the end of the first batch to the end of the round (0
        with one batch, or from a client that does not report it).
    """

    examples: int
    loss: float = math.nan
    accuracy: float = math.nan
    batches: int = 0
    stage1_ms: float = 0.0
    stage3_ms: float = 0.0
    stage5_ms: float = 0.0
    helper_service_ms: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    load_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    steady_batch_ms: float = 0.0

    _KEYS = {
        "examples": NUM_EXAMPLES,
        "loss": TRAIN_LOSS,
        "accuracy": TRAIN_ACC,
        "batches": "batches",
        "stage1_ms": "stage1-ms",
        "stage3_ms": "stage3-ms",
        "stage5_ms": "stage5-ms",
        "helper_service_ms": "helper-service-ms",
        "started": "started",
        "ended": "ended",
        "load_ms": "load-ms",
        "bytes_up": BYTES_UP,
        "bytes_down": BYTES_DOWN,
        "steady_batch_ms": "steady-batch-ms",
    }
    _APP_FIELDS = ("examples", "loss", "accuracy")

    def to_metrics(self) -> MetricRecord:
        """The reply's ``metrics`` record; a loss or accuracy the client does not know (NaN:
        the app's own training function reported none) is left out."""
        values = {key: getattr(self, name) for name, key in self._KEYS.items()}
        for key in (TRAIN_LOSS, TRAIN_ACC):
            if isinstance(values[key], float) and math.isnan(values[key]):
                del values[key]
        return MetricRecord(values)

    @classmethod
    def app_metrics(cls, metrics: Mapping[str, Any]) -> MetricRecord:
        """``metrics`` without the measurements the planner reads (batches, stage and load
        times, span): what the wrapped strategy aggregates and the app's results show, as they
        would be without split learning."""
        measured = {key for name, key in cls._KEYS.items() if name not in cls._APP_FIELDS}
        return MetricRecord({key: value for key, value in metrics.items() if key not in measured})

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> ClientResult | None:
        """Read :meth:`to_metrics`; ``None`` for a reply without stage times (a plain
        FedAvg client)."""
        if "stage1-ms" not in metrics:
            return None
        return cls(**{name: metrics[key] for name, key in cls._KEYS.items() if key in metrics})


def train_metrics(examples: int, loss: float, accuracy: float) -> MetricRecord:
    """Flower's train metrics of a client that trained the full model itself."""
    return MetricRecord({NUM_EXAMPLES: examples, TRAIN_LOSS: loss, TRAIN_ACC: accuracy})


def eval_metrics(examples: int, loss: float, accuracy: float) -> MetricRecord:
    """Flower's evaluate metrics of a client."""
    return MetricRecord({NUM_EXAMPLES: examples, EVAL_LOSS: loss, EVAL_ACC: accuracy})


def test_metrics(
    examples: int, loss: float, accuracy: float, coded_accuracy: float | None = None
) -> MetricRecord:
    """The server-side evaluation's metrics (the strategy's ``evaluate_fn``); with a lossy
    activation codec also the accuracy with it at the cuts."""
    metrics = {NUM_EXAMPLES: examples, TEST_LOSS: loss, TEST_ACC: accuracy}
    if coded_accuracy is not None:
        metrics[TEST_ACC_CODED] = coded_accuracy
    return MetricRecord(metrics)


def reply_content(arrays: ArrayRecord, metrics: MetricRecord) -> RecordDict:
    """A train reply's content: the model (part) and its metrics."""
    return RecordDict({ARRAYS: arrays, METRICS: metrics})


@dataclass(frozen=True)
class TaskSpan:
    """One task a helper ran: whose, which kind, and when (wall-clock seconds)."""

    client: str
    kind: str
    start: float
    end: float


@dataclass
class HelperResult:
    """A helper's reply besides the bodies: what it served and how long it took.

    Attributes
    ----------
    finished, dropped : list of str
        Clients that finished the round, and clients dropped as idle (silent, or never
        connected, for ``client-idle-timeout``).
    busy_seconds, wall_seconds : float
        Time spent running tasks, and the whole round.
    refused, invalid_requests : int
        Requests refused as unauthenticated, and malformed frames.
    peak_rss_mib : float
        The helper process's peak memory.
    body_fwd_ms, body_bwd_ms : float
        Mean time of a forward and a backward task.
    timeline : list of TaskSpan
        Every task it ran.
    step_examples, step_clients : list of int, optional
        Global sampling: examples and clients of each synchronous step.
    drop_reasons : dict
        Dropped client -> why the helper dropped it (``no request for 120 s``); the
        server names it in the round's failures.
    aborted : dict of str to str
        Clients that gave up their round mid-way, released at once: client -> reason (the
        client's ``Abort``, e.g. ``"ValueError: bad batch"``, or its connection closing).
    """

    finished: list[str]
    dropped: list[str] = field(default_factory=list)
    busy_seconds: float = 0.0
    wall_seconds: float = 0.0
    refused: int = 0
    invalid_requests: int = 0
    peak_rss_mib: float = 0.0
    body_fwd_ms: float = 0.0
    body_bwd_ms: float = 0.0
    timeline: list[TaskSpan] = field(default_factory=list)
    step_examples: list[int] | None = None
    step_clients: list[int] | None = None
    drop_reasons: dict[str, str] = field(default_factory=dict)
    aborted: dict[str, str] = field(default_factory=dict)

    def to_content(self, bodies: Mapping[str, ArrayRecord]) -> RecordDict:
        """The reply's content, with ``bodies`` (client -> its trained body)."""
        content = RecordDict()
        for client, record in bodies.items():
            content[body_record(client)] = record
        metrics: dict[str, Any] = {
            "clients-finished": len(self.finished),
            "clients-dropped": len(self.dropped),
            "clients-aborted": len(self.aborted),
            "busy-seconds": self.busy_seconds,
            "wall-seconds": self.wall_seconds,
            "refused": self.refused,
            "invalid-requests": self.invalid_requests,
            "tasks": len(self.timeline),
            "peak-rss-mib": self.peak_rss_mib,
            "body-fwd-ms": self.body_fwd_ms,
            "body-bwd-ms": self.body_bwd_ms,
        }
        if self.step_examples is not None:
            metrics["sync-steps"] = len(self.step_examples)
            metrics["step-examples"] = list(self.step_examples) or [0]
            metrics["step-clients"] = list(self.step_clients or []) or [0]
        content[METRICS] = MetricRecord(metrics)
        dropped, aborted = sorted(self.dropped), sorted(self.aborted)
        content[CONFIG] = ConfigRecord(
            {
                "finished": sorted(self.finished),
                "dropped": dropped,
                "drop-reasons": [self.drop_reasons.get(c, "") for c in dropped],
                "aborted": aborted,
                "aborted-reasons": [self.aborted[c] for c in aborted],
            }
        )
        content[TIMELINE] = ConfigRecord(
            {
                "client": [t.client for t in self.timeline],
                "kind": [t.kind for t in self.timeline],
                "start": [float(t.start) for t in self.timeline],
                "end": [float(t.end) for t in self.timeline],
            }
        )
        return content

    @classmethod
    def from_content(cls, content: RecordDict) -> HelperResult:
        """Read a reply written by :meth:`to_content` (the bodies: :func:`bodies_of`)."""
        where = "train.helper reply"
        metrics = _get(content.metric_records, METRICS, where)
        config = content.config_records.get(CONFIG, ConfigRecord())
        record = content.config_records.get(TIMELINE, ConfigRecord())
        columns = [list(record.get(key, [])) for key in ("client", "kind", "start", "end")]
        timeline = [
            TaskSpan(str(c), str(k), float(s), float(e))
            for c, k, s, e in zip(*columns, strict=True)
        ]
        steps = metrics.get("step-examples")
        dropped = [str(c) for c in config.get("dropped", [])]
        reasons = [str(r) for r in config.get("drop-reasons", [])]
        return cls(
            finished=[str(c) for c in config.get("finished", [])],
            dropped=dropped,
            busy_seconds=float(metrics.get("busy-seconds", 0.0)),
            wall_seconds=float(metrics.get("wall-seconds", 0.0)),
            refused=int(metrics.get("refused", 0)),
            invalid_requests=int(metrics.get("invalid-requests", 0)),
            peak_rss_mib=float(metrics.get("peak-rss-mib", 0.0)),
            body_fwd_ms=float(metrics.get("body-fwd-ms", 0.0)),
            body_bwd_ms=float(metrics.get("body-bwd-ms", 0.0)),
            timeline=timeline,
            step_examples=[int(n) for n in steps] if steps is not None else None,
            step_clients=[int(n) for n in metrics.get("step-clients", [])]
            if steps is not None
            else None,
            drop_reasons={c: r for c, r in zip(dropped, reasons, strict=False) if r},
            aborted=dict(
                zip(
                    [str(c) for c in config.get("aborted", [])],
                    [str(r) for r in config.get("aborted-reasons", [])],
                    strict=False,
                )
            ),
        )


def with_base_hash(content: RecordDict, held: str) -> RecordDict:
    """``content`` with the hash of the frozen base the replying node holds (nothing is
    added without a frozen base)."""
    if held:
        content[BASE] = ConfigRecord({BASE_HASH: held})
    return content


def base_hash_of(content: RecordDict) -> str:
    """The frozen base hash a reply names (:func:`with_base_hash`), or ``""``."""
    record = content.config_records.get(BASE)
    return str(record.get(BASE_HASH, "")) if record is not None else ""


def bodies_of(content: RecordDict) -> dict[int, ArrayRecord]:
    """The ``body.<client>`` records of a helper's reply, by client."""
    bodies: dict[int, ArrayRecord] = {}
    for name, record in content.array_records.items():
        client = body_owner(name)
        if client is not None:
            bodies[client] = record
    return bodies


def as_dict(result: ClientResult | HelperResult | NodeReport) -> dict[str, Any]:
    """A protocol dataclass as a plain dict (for logs and JSON)."""
    return asdict(result)


__all__ = [
    "ARRAYS",
    "BACKWARD",
    "BASE",
    "BASE_CACHE",
    "BASE_CACHE_INFO",
    "BASE_HASH",
    "BYTES_DOWN",
    "BYTES_UP",
    "CLIENT_TRAIN",
    "CONFIG",
    "DATA_PLANE_BYTES",
    "EVAL_ACC",
    "EVAL_LOSS",
    "FORWARD",
    "HELPER_ACTION",
    "HELPER_TRAIN",
    "INFO",
    "METRICS",
    "MODE",
    "NEXT_LINK_LATENCY_MS",
    "NEXT_LINK_MBPS",
    "NUM_EXAMPLES",
    "QUERY",
    "ROLES",
    "ROLE_CLIENT",
    "ROLE_HELPER",
    "ROUND_WALL_SECONDS",
    "SCHEDULE_COUNTS",
    "SCHEDULE_SHAPE",
    "SERVER_ROUND",
    "SPLIT_ACTION",
    "TASK_KINDS",
    "TEST_ACC",
    "TEST_ACC_CODED",
    "TEST_LOSS",
    "TIMELINE",
    "TRAIN_ACC",
    "TRAIN_LOSS",
    "ClientResult",
    "ClientRound",
    "HelperResult",
    "HelperRound",
    "HelperTask",
    "NodeReport",
    "ProtocolError",
    "ServedClient",
    "TaskSpan",
    "base_hash_of",
    "bodies_of",
    "body_owner",
    "body_record",
    "eval_metrics",
    "has_schedule",
    "pack_schedule",
    "reply_content",
    "test_metrics",
    "train_metrics",
    "unpack_schedule",
    "with_base_hash",
]
