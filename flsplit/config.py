"""The run config: every key flsplit reads, its default, and one typed parse.

A Flower app sets these in ``[tool.flwr.app.config]`` (``flwr run --run-config`` and
``flsplit simulate --run-config`` override them). :data:`DEFAULT_RUN_CONFIG` is the one
place a default is written; :meth:`RunConfig.parse` is the one place a value is
converted and checked, so every role reads a setting as ``config.batch_size`` and never
repeats a default. Keys flsplit does not know (an app's own, such as ``dataset``) pass
through untouched in :attr:`RunConfig.values`, which is also what user code (``model_fn``,
``load_data``, ``optimizer_fn``) receives.

Combinations that cannot work together (global sampling with a planner or with chains,
micro-batches with a shared body, ...) are refused here too, with the key, the bad value
and the fix in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Run-config keys flsplit reads and their defaults (a ``[tool.flwr.app.config]`` may
#: override any of them).
DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-server-rounds": 3,
    "num-helpers": 1,
    "num-clients": 2,  # flsplit simulate starts num-helpers + num-clients virtual nodes
    "mode": "split",  # "split" or "fedavg" (plain FedAvg of the same model, for comparison)
    "cuts": "",  # comma-separated module names or indices; empty = default U-shape
    "lr": 0.05,
    "momentum": 0.0,
    # FedProx's mu (Flower's FedProx puts it in every train message): the body adds its
    # proximal term on the helper, flsplit's own loop for head and tail too
    "proximal-mu": 0.0,
    # the client's proximal term: "squared" mu/2 ||w - w0||^2 (the FedProx paper) or "norm"
    # mu/2 ||w - w0|| per tensor (Flower's FedProx docstring)
    "proximal-term": "squared",
    "local-epochs": 1,
    "batch-size": 32,
    "round-timeout": 600.0,
    "call-deadline": 120.0,
    "client-idle-timeout": 120.0,  # a helper drops a client silent this long (0 = never)
    "helper-memory": "per-client",  # or "shared": one body for all of a helper's clients
    # helpers per client: the body is split again over a chain of them; with a planner
    # the most hops a planned chain may have, or "auto" (as many as pay)
    "chain-length": 1,
    # helper chains (planned or round-robin): which helpers reach which ("0-1,1-2":
    # helper indices), empty = every helper reaches every other
    "helper-links": "",
    "chain-cuts": "auto",  # inner cuts of a chain (comma-separated), or "auto": balanced
    "micro-batches": 1,  # micro-batches per batch, pipelined through the helper(s)
    # Data-plane compression (docs/dataplane.md): a codec per direction, e.g. "int8",
    # "topk:0.1+ef"; a client's node config may override either for its own link
    "compress-activations": "none",
    "compress-gradients": "none",
    "min-completed-clients": 1,  # fewer complete updates: the round is not aggregated
    "checkpoint-dir": "",  # write a checkpoint after every round here; resume from it
    "output-dir": "",  # history.json, and with a planner round-N.json (and round-N.png)
    "gantt": False,  # with a planner and output-dir: planned vs measured Gantt per round
    "simulation-concurrency": 0,  # flsplit simulate: nodes at once (0 = all, at most 24)
    "torch-threads": 0,  # torch threads per node (0 = torch's default)
    "fraction-evaluate": 1.0,
    "planner": "round-robin",  # or a planner method: auto, greedy, random-fcfs, ...
    "planner-time-limit": 2.0,
    # cut pairs the planner chooses from every round, ';'-separated ("conv2,fc1;bn2,fc2"),
    # or "all"; empty = every client keeps `cuts`
    "cut-candidates": "",
    "cut-method": "auto",  # joint cut optimizer: auto, integrated, alternating, exact
    # Global sampling (docs/sampling.md): "local" = every client its own local batches;
    # "uniform" / "dirichlet" = synchronous steps whose composition the server samples
    "sampler": "local",
    "global-batch-size": 0,  # samples per synchronous step (0 = batch-size)
    "sampler-concentration": 100.0,  # dirichlet: how close steps stay to the mean share
    "sampler-straggler-weight": 0.0,  # dirichlet: 1 = shares proportional to data x speed
    "sampler-seed": 0,
    # dirichlet: straggler costs from the "measured" per-sample times of the last round
    # (round 1: reported factors) or always the "reported" compute factors
    "sampler-speeds": "measured",
    "sync-steps": 0,  # synchronous steps per round (0 = local-epochs epochs of the sampler)
    "client-parts": "shared",  # synchronous steps: "shared" (exact) or "local" head/tail
    # Emulated heterogeneity in simulation (flsplit.runtime.emulation)
    "emulate": False,
    "client-devices": "rpi4",
    "helper-devices": "vm",
    "emulation-host": "vm",
    # emulated nodes report their preset's memory times this (a small model standing in
    # for a large one: its bodies take the share of a helper the large model's would)
    "emulation-memory-scale": 1.0,
    "link-mbps": "1-4:30,5-10:42,16-20:28",  # one rate or a mix: every pair draws its own
    "link-latency-ms": 0.0,
    # helper-helper links of chains (with emulate): one rate or a mix as link-mbps, every
    # helper pair draws its own; empty = free (not emulated). The chain planner plans
    # with the same figures
    "helper-link-mbps": "",
    "helper-link-latency-ms": 0.0,
    "slowdown": "",  # "ROLE:INDEX:FACTOR:ROUND;..."
    "seed": 0,
}

#: Run-config keys that may change between a run and its resumption from a checkpoint:
#: they bound, place, time or record the run, but do not change the model's trajectory
#: (what the same rounds with the same data would compute). Every other key, an app's own
#: keys included (a key added later too), is part of the checkpoint's fingerprint, so a
#: resumed run refuses a checkpoint written with another value of it.
RESUMABLE_KEYS: frozenset[str] = frozenset({
    # how many rounds, and where the run writes: more rounds continue the same trajectory
    "num-server-rounds", "checkpoint-dir", "output-dir", "gantt",
    # timeouts and limits: they decide only what happens when something fails (a client
    # or helper left out, a round kept), which an operator raises after a timed-out round
    "round-timeout", "call-deadline", "client-idle-timeout", "min-completed-clients",
    # resources of the machine running it
    "simulation-concurrency", "torch-threads",
    # federated evaluation of the global model: reported, never trained on
    "fraction-evaluate",
    # who runs which part where: with a body per client (helper-memory "per-client") a
    # client's update is the same on any helper, so the planner, its time limit and its
    # cut optimizer place work without changing it (cuts and cut-candidates stay
    # fingerprinted: with a shared body they change what is computed)
    "planner", "planner-time-limit", "cut-method", "helper-links",
    # emulated heterogeneity in simulation: it slows nodes and links down, nothing else
    "emulate", "client-devices", "helper-devices", "emulation-host", "link-mbps",
    "link-latency-ms", "helper-link-mbps", "helper-link-latency-ms", "slowdown",
    "emulation-memory-scale",
})

MODES = ("split", "fedavg")
HELPER_MEMORY_MODES = ("per-client", "shared")
PROXIMAL_TERMS = ("squared", "norm")
SAMPLERS = ("local", "uniform", "dirichlet")
CLIENT_PARTS = ("shared", "local")
SAMPLER_SPEEDS = ("measured", "reported")
ROUND_ROBIN = "round-robin"
MAX_CHAIN_LENGTH = 16
#: Data-plane codecs (:mod:`flsplit.runtime.codecs`): ``none`` sends raw bytes; the
#: others are lossy. ``topk``, ``randtopk`` and ``utopk`` take the fraction of entries kept.
CODECS = ("none", "fp16", "bf16", "int8", "topk", "randtopk", "utopk")
#: the codecs that send a fraction of the entries (an index and a value each)
SPARSE_CODECS = ("topk", "randtopk", "utopk")
#: The run-config (and node-config) keys naming the codec of each direction.
COMPRESS_ACTIVATIONS, COMPRESS_GRADIENTS = "compress-activations", "compress-gradients"
#: Run-config key of the helper-helper links (index pairs); in a helper's node config,
#: the helpers it has a link with (their indices).
HELPER_LINKS = "helper-links"


@dataclass(frozen=True)
class ChainSettings:
    """Validated chain settings of a run config.

    Attributes
    ----------
    length : int
        Helpers per client (round-robin chains), or the most hops of a planned chain.
    cuts : str
        ``"auto"`` or the comma-separated inner cuts.
    micro_batches : int
        Micro-batches per batch.
    auto : bool
        ``chain-length = "auto"``: planned chains of as many hops as pay (``length`` is
        then :data:`MAX_CHAIN_LENGTH`).
    """

    length: int = 1
    cuts: str = "auto"
    micro_batches: int = 1
    auto: bool = False


@dataclass(frozen=True)
class SyncSettings:
    """Validated global-sampling settings of a run config (docs/sampling.md).

    Attributes
    ----------
    sampler : str
        ``fixed-local`` (run config ``local``), ``uniform`` or ``dirichlet``.
    sync : bool
        Whether rounds run synchronous steps (every sampler but ``local``).
    batch_size, global_batch_size : int
        A client's local batch; samples per synchronous step (``batch-size`` if 0).
    concentration, straggler_weight : float
        The Dirichlet sampler's settings.
    speeds : str
        Where the Dirichlet sampler's per-sample costs come from: ``measured`` (the last
        round's, the reported compute factors in round 1) or ``reported``.
    seed, steps, local_epochs : int
        Sampler seed; synchronous steps per round (0: ``local_epochs`` epochs).
    client_parts : str
        ``shared`` or ``local`` head and tail in synchronous steps.
    """

    sampler: str = "fixed-local"
    sync: bool = False
    batch_size: int = 32
    global_batch_size: int = 32
    concentration: float = 100.0
    straggler_weight: float = 0.0
    speeds: str = "measured"
    seed: int = 0
    steps: int = 0
    local_epochs: int = 1
    client_parts: str = "shared"


def int8_channel_axis(ndim: int) -> int | None:
    """The dimension ``int8`` keeps a scale and zero point per entry of: 1 of a 4-D tensor
    (``N, C, H, W``), the last of a 2-D or 3-D one (or more); ``None`` (one channel) for
    0-D and 1-D tensors."""
    if ndim < 2:
        return None
    return 1 if ndim == 4 else ndim - 1


def int8_channels(shape: Sequence[int]) -> int:
    """How many scales and zero points ``int8`` sends for a tensor of ``shape``."""
    axis = int8_channel_axis(len(shape))
    return 1 if axis is None else int(shape[axis])


@dataclass(frozen=True)
class CodecSetting:
    """A data-plane codec as a run config spells it: ``NAME[:FRACTION][+ef]``.

    Attributes
    ----------
    name : str
        One of :data:`CODECS`.
    fraction : float
        ``topk``/``randtopk``/``utopk``: the fraction of entries sent (in ``(0, 1]``);
        else 1.
    feedback : bool
        Error feedback (``+ef``): the sender adds what the codec lost last time to the
        next tensor it sends over the same link, cut and direction.
    """

    name: str = "none"
    fraction: float = 1.0
    feedback: bool = False

    @property
    def lossless(self) -> bool:
        """Whether tensors travel as they are (``none``)."""
        return self.name == "none"

    @property
    def byte_ratio(self) -> float:
        """Bytes sent per raw ``float32`` byte: 1 (``none``), 1/2 (``fp16``, ``bf16``),
        1/4 (``int8``; its 8 bytes of scale and zero point per channel are
        :meth:`fixed_bytes`), twice the fraction (``topk``, ``randtopk``, ``utopk``: an
        int32 index and a float32 value per entry kept). What the planner charges a link
        for a coded tensor's values."""
        if self.name in ("fp16", "bf16"):
            return 0.5
        if self.name == "int8":
            return 0.25
        if self.name in SPARSE_CODECS:
            return 2.0 * self.fraction
        return 1.0

    def fixed_bytes(self, shape: Sequence[int]) -> int:
        """Bytes a ``float32`` tensor of ``shape`` takes coded besides its values, the
        same for a batch of any size: ``int8``'s float32 scale and zero point per channel
        (:func:`int8_channels`); 0 for the other codecs. The planner charges them on
        every transfer, unscaled by a client's batch fill (a 32x64 cut sends 2048 bytes
        of values and 512 of scales)."""
        return 8 * int8_channels(shape) if self.name == "int8" else 0

    def __str__(self) -> str:
        text = self.name
        if self.name in SPARSE_CODECS:
            text += f":{self.fraction:g}"
        return text + ("+ef" if self.feedback else "")


def parse_codec(text: object, key: str = COMPRESS_ACTIVATIONS) -> CodecSetting:
    """Read a codec spelling (``none``, ``fp16``, ``bf16``, ``int8``, ``topk:0.1``,
    ``randtopk:0.05``, ``utopk:0.1``, any lossy one with ``+ef``).

    Raises
    ------
    ValueError
        Naming ``key``, the value and the spellings allowed.
    """
    example = "e.g. 'int8', 'fp16', 'topk:0.1+ef' or 'none'"
    spelling = str(text).strip().lower() if text is not None else "none"
    name, _, feedback = spelling.partition("+")
    if feedback not in ("", "ef"):
        raise ValueError(f"run config {key}={text!r}: only '+ef' may follow a codec; {example}")
    name, colon, fraction_text = name.partition(":")
    if name not in CODECS:
        raise ValueError(f"run config {key}={text!r}: codec {name!r} is not one of "
                         f"{CODECS}; {example}")
    fraction = 1.0
    if name in SPARSE_CODECS:
        try:
            fraction = float(fraction_text)
        except ValueError:
            raise ValueError(f"run config {key}={text!r}: {name} needs the fraction of "
                             f"entries it keeps, e.g. '{name}:0.1'") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"run config {key}={text!r}: the fraction must be in (0, 1]")
    elif colon:
        raise ValueError(f"run config {key}={text!r}: only topk, randtopk and utopk take "
                         f"a fraction; {example}")
    if feedback and name == "none":
        raise ValueError(f"run config {key}={text!r}: 'none' loses nothing to feed back")
    return CodecSetting(name, fraction, bool(feedback))


def _toml(value: Any) -> str:
    """``value`` as it is written in a TOML run config."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _bad(key: str, value: Any, what: str, example: Any) -> ValueError:
    return ValueError(
        f"run config {key}={value!r} {what}; set it in [tool.flwr.app.config] or with "
        f"--run-config '{key}={_toml(example)}'"
    )


def _integer(values: Mapping[str, Any], key: str) -> int:
    raw = values[key]
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = int(raw)
        if number != float(raw):
            raise ValueError
    except (TypeError, ValueError):
        raise _bad(key, raw, "is not an integer", DEFAULT_RUN_CONFIG[key]) from None
    return number


def _number(values: Mapping[str, Any], key: str) -> float:
    raw = values[key]
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = float(raw)
    except (TypeError, ValueError):
        raise _bad(key, raw, "is not a number", DEFAULT_RUN_CONFIG[key]) from None
    if not math.isfinite(number):
        raise _bad(key, raw, "is not a finite number", DEFAULT_RUN_CONFIG[key])
    return number


def _flag(values: Mapping[str, Any], key: str) -> bool:
    raw = values[key]
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", ""):
        return raw.strip().lower() in ("true", "1")
    raise _bad(key, raw, "is not true or false", DEFAULT_RUN_CONFIG[key])


def _choice(values: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = str(values[key])
    if value not in choices:
        raise ValueError(
            f"run config {key}={value!r} is not one of {', '.join(choices)}: "
            f"e.g. --run-config '{key}=\"{choices[0]}\"'"
        )
    return value


def _positive_int(config: Mapping[str, Any], key: str, upper: int, fix: str) -> int:
    value = config.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"run config {key}={value!r} is not an integer; {fix}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"run config {key}={value!r} is not an integer; {fix}") from None
    if number != float(value) or not 1 <= number <= upper:
        raise ValueError(f"run config {key}={value!r} must be an integer in [1, {upper}]; {fix}")
    return number


def chain_settings(config: Mapping[str, Any]) -> ChainSettings:
    """Read and check ``chain-length``, ``chain-cuts`` and ``micro-batches``.

    Parameters
    ----------
    config : Mapping
        The run config (``batch-size`` and ``helper-memory`` are checked against them);
        missing keys take their defaults.

    Returns
    -------
    ChainSettings

    Raises
    ------
    ValueError
        Naming the bad value and the fix.
    """
    config = {**DEFAULT_RUN_CONFIG, **config}
    auto = str(config["chain-length"]).strip().lower() == "auto"
    if auto and str(config.get("planner", ROUND_ROBIN)) == ROUND_ROBIN:
        raise ValueError(
            "run config chain-length='auto' needs a planner (planned chains of as many "
            "hops as pay): set planner='auto', or chain-length to a number of helpers"
        )
    length = MAX_CHAIN_LENGTH if auto else _positive_int(
        config, "chain-length", MAX_CHAIN_LENGTH,
        "use 1 for one helper per client, or 'auto' with a planner"
    )
    batch = int(config["batch-size"])
    micro = _positive_int(
        config,
        "micro-batches",
        max(batch, 1),
        f"at most batch-size={batch} micro-batches (1 sends whole batches)",
    )
    cuts = str(config["chain-cuts"]).strip() or "auto"
    if cuts != "auto":
        names = [c for c in cuts.split(",") if c.strip()]
        if len(names) != length - 1:
            raise ValueError(
                f"run config chain-cuts={cuts!r} names {len(names)} inner cuts, but "
                f"chain-length={length} needs {length - 1}; or set chain-cuts='auto'"
            )
    memory = str(config["helper-memory"])
    if micro > 1 and memory == "shared":
        raise ValueError(
            f"run config micro-batches={micro} with helper-memory='shared': the shared body "
            "takes whole batches only; set micro-batches=1 or helper-memory='per-client'"
        )
    return ChainSettings(length=length, cuts=cuts, micro_batches=micro, auto=auto)


def helper_links(config: Mapping[str, Any]) -> frozenset[tuple[int, int]] | None:
    """The helper-helper links of run-config key ``helper-links`` as helper index pairs
    (both orders), or ``None`` when every helper reaches every other.

    Raises
    ------
    ValueError
        Naming the bad item and the fix.
    """
    text = str({**DEFAULT_RUN_CONFIG, **config}["helper-links"]).strip()
    if not text:
        return None
    pairs: set[tuple[int, int]] = set()
    for item in (i.strip() for i in text.split(",") if i.strip()):
        ends = item.split("-")
        try:
            a, b = (int(e) for e in ends)
        except ValueError:
            a = b = -1
        if len(ends) != 2 or a < 0 or b < 0 or a == b:
            raise ValueError(
                f"run config helper-links item {item!r} is not two different helper "
                "indices joined by '-'; e.g. helper-links='0-1,1-2'"
            )
        pairs |= {(a, b), (b, a)}
    return frozenset(pairs)


def reached_helpers(text: object) -> frozenset[int]:
    """The helper indices a helper's node config ``helper-links`` names (``"1,2"``): the
    helpers it has a link with; ``""`` names none.

    Raises
    ------
    ValueError
        Naming the bad item and the fix.
    """
    found: set[int] = set()
    for item in (i.strip() for i in str(text).split(",") if i.strip()):
        try:
            index = int(item)
        except ValueError:
            index = -1
        if index < 0:
            raise ValueError(
                f"node config {HELPER_LINKS} item {item!r} is not a helper index; e.g. "
                f"--node-config '{HELPER_LINKS}=\"1,2\"' (the helpers this one has a link "
                "with)"
            )
        found.add(index)
    return frozenset(found)


def sync_settings(config: Mapping[str, Any]) -> SyncSettings:
    """Check the run-config keys of global sampling.

    Keys: ``sampler`` (:data:`SAMPLERS`), ``global-batch-size`` (0 = the ``batch-size``),
    ``sampler-concentration`` (> 0), ``sampler-straggler-weight`` (>= 0),
    ``sampler-speeds`` (:data:`SAMPLER_SPEEDS`), ``sampler-seed`` (>= 0), ``sync-steps``
    (steps per round, 0 = ``local-epochs`` epochs of the sampler) and ``client-parts``
    (:data:`CLIENT_PARTS`); missing keys take their defaults.

    Returns
    -------
    SyncSettings
        ``sampler`` is ``fixed-local`` for ``local``; ``global_batch_size`` resolved.

    Raises
    ------
    ValueError
        Naming the key, the bad value and what to give instead.
    """
    config = {**DEFAULT_RUN_CONFIG, **config}

    def number(key: str, kind: type, low: float, strict: bool) -> Any:
        raw, default = config[key], DEFAULT_RUN_CONFIG[key]
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = kind(raw)
            if kind is int and value != float(raw):
                raise ValueError
        except (TypeError, ValueError):
            value = None
        if value is None or not math.isfinite(value) or value < low or (strict and value == low):
            bound = f"{'>' if strict else '>='} {low:g}"
            what = "an integer" if kind is int else "a number"
            raise ValueError(
                f"run config {key}={raw!r} must be {what} {bound}, e.g. --run-config "
                f"'{key}={kind(default) if default > low or not strict else 1}'"
            )
        return value

    name = str(config["sampler"])
    if name == "fixed-local":
        name = "local"
    if name not in SAMPLERS:
        raise ValueError(
            f"run config sampler={name!r} is not one of {', '.join(SAMPLERS)}: "
            "e.g. --run-config 'sampler=\"uniform\"'"
        )
    parts = str(config["client-parts"])
    if parts not in CLIENT_PARTS:
        raise ValueError(
            f"run config client-parts={parts!r} is not one of {', '.join(CLIENT_PARTS)}: "
            "e.g. --run-config 'client-parts=\"shared\"'"
        )
    speeds = str(config["sampler-speeds"])
    if speeds not in SAMPLER_SPEEDS:
        raise ValueError(
            f"run config sampler-speeds={speeds!r} is not one of {', '.join(SAMPLER_SPEEDS)}: "
            "e.g. --run-config 'sampler-speeds=\"measured\"'"
        )
    local = number("batch-size", int, 0, True)
    return SyncSettings(
        sampler="fixed-local" if name == "local" else name,
        sync=name != "local",
        batch_size=local,
        global_batch_size=number("global-batch-size", int, 0, False) or local,
        concentration=number("sampler-concentration", float, 0, True),
        straggler_weight=number("sampler-straggler-weight", float, 0, False),
        speeds=speeds,
        seed=number("sampler-seed", int, 0, False),
        steps=number("sync-steps", int, 0, False),
        local_epochs=number("local-epochs", int, 0, True),
        client_parts=parts,
    )


def check_modes(config: Mapping[str, Any]) -> None:
    """Refuse run-config combinations that do not go together.

    Global sampling (``sampler`` other than ``"local"``) needs ``mode = "split"``, one
    helper per client (``chain-length = 1``) and, with a planner, the same cuts for every
    client (no ``cut-candidates``).

    Raises
    ------
    ValueError
        Naming the values and the fix.
    """
    config = {**DEFAULT_RUN_CONFIG, **config}
    mode = str(config["mode"])
    if mode not in MODES:
        raise ValueError(
            f"run config mode={mode!r} is not 'split' or 'fedavg': e.g. --run-config "
            "'mode=\"split\"'"
        )
    if not sync_settings(config).sync:
        return
    sampler = config["sampler"]
    if mode != "split":
        raise ValueError(
            f"run config sampler={sampler!r} needs mode='split' (synchronous steps through "
            "a helper); use sampler='local' with mode='fedavg'"
        )
    if str(config["planner"]) != ROUND_ROBIN and str(config["cut-candidates"]).strip():
        raise ValueError(
            f"run config sampler={sampler!r} with cut-candidates: a helper runs one body "
            "for all its clients in a synchronous step, so every client keeps the same "
            "cuts; clear cut-candidates or set sampler='local'"
        )
    length = chain_settings(config).length
    if length > 1:
        raise ValueError(
            f"run config sampler={sampler!r} with chain-length={length}: synchronous steps "
            "run on one helper per client; set chain-length=1 or sampler='local'"
        )


@dataclass(frozen=True)
class RunConfig:
    """A run config, read once: typed settings plus every raw value.

    Build it with :meth:`parse`; attribute names are the keys of
    :data:`DEFAULT_RUN_CONFIG` with ``_`` for ``-``.
    """

    num_server_rounds: int
    num_helpers: int
    num_clients: int
    mode: str
    cuts: str
    lr: float
    momentum: float
    proximal_mu: float
    proximal_term: str
    local_epochs: int
    batch_size: int
    round_timeout: float
    call_deadline: float
    client_idle_timeout: float
    helper_memory: str
    chain: ChainSettings
    helper_links: frozenset[tuple[int, int]] | None
    compress_activations: CodecSetting
    compress_gradients: CodecSetting
    min_completed_clients: int
    checkpoint_dir: str
    output_dir: str
    gantt: bool
    simulation_concurrency: int
    torch_threads: int
    fraction_evaluate: float
    planner: str
    planner_time_limit: float
    cut_candidates: str
    cut_method: str
    sync: SyncSettings
    emulate: bool
    client_devices: str
    helper_devices: str
    emulation_host: str
    emulation_memory_scale: float
    slowdown: str
    link_mbps: str
    link_latency_ms: float
    helper_link_mbps: str
    helper_link_latency_ms: float
    seed: int
    values: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, *configs: Mapping[str, Any] | None) -> RunConfig:
        """Merge ``configs`` over the defaults (later ones win) and check every value.

        Parameters
        ----------
        *configs : Mapping, optional
            Run configs (an app's defaults, Flower's run config, a message's config).

        Returns
        -------
        RunConfig

        Raises
        ------
        ValueError
            Naming the key, the bad value and the fix.
        """
        values: dict[str, Any] = dict(DEFAULT_RUN_CONFIG)
        for config in configs:
            values.update(config or {})
        for key in ("cuts", "chain-cuts", "cut-candidates", "checkpoint-dir", "output-dir"):
            values[key] = "" if values[key] is None else str(values[key])
        for key in ("num-server-rounds", "num-clients", "local-epochs", "batch-size"):
            if _integer(values, key) < 1:
                raise _bad(key, values[key], "must be at least 1", DEFAULT_RUN_CONFIG[key])
        for key in ("num-helpers", "min-completed-clients", "simulation-concurrency",
                    "torch-threads", "seed"):
            if _integer(values, key) < 0:
                raise _bad(key, values[key], "must not be negative", DEFAULT_RUN_CONFIG[key])
        for key in ("round-timeout", "call-deadline", "planner-time-limit",
                    "emulation-memory-scale"):
            if _number(values, key) <= 0:
                raise _bad(key, values[key], "must be positive", DEFAULT_RUN_CONFIG[key])
        for key in ("client-idle-timeout", "link-latency-ms", "helper-link-latency-ms", "lr",
                    "momentum", "proximal-mu"):
            if _number(values, key) < 0:
                raise _bad(key, values[key], "must not be negative", DEFAULT_RUN_CONFIG[key])
        check_modes(values)
        return cls(
            num_server_rounds=_integer(values, "num-server-rounds"),
            num_helpers=_integer(values, "num-helpers"),
            num_clients=_integer(values, "num-clients"),
            mode=_choice(values, "mode", MODES),
            cuts=values["cuts"],
            lr=_number(values, "lr"),
            momentum=_number(values, "momentum"),
            proximal_mu=_number(values, "proximal-mu"),
            proximal_term=_choice(values, "proximal-term", PROXIMAL_TERMS),
            local_epochs=_integer(values, "local-epochs"),
            batch_size=_integer(values, "batch-size"),
            round_timeout=_number(values, "round-timeout"),
            call_deadline=_number(values, "call-deadline"),
            client_idle_timeout=_number(values, "client-idle-timeout"),
            helper_memory=_choice(values, "helper-memory", HELPER_MEMORY_MODES),
            chain=chain_settings(values),
            helper_links=helper_links(values),
            compress_activations=parse_codec(values[COMPRESS_ACTIVATIONS], COMPRESS_ACTIVATIONS),
            compress_gradients=parse_codec(values[COMPRESS_GRADIENTS], COMPRESS_GRADIENTS),
            min_completed_clients=_integer(values, "min-completed-clients"),
            checkpoint_dir=values["checkpoint-dir"],
            output_dir=values["output-dir"],
            gantt=_flag(values, "gantt"),
            simulation_concurrency=_integer(values, "simulation-concurrency"),
            torch_threads=_integer(values, "torch-threads"),
            fraction_evaluate=_number(values, "fraction-evaluate"),
            planner=str(values["planner"]),
            planner_time_limit=_number(values, "planner-time-limit"),
            cut_candidates=values["cut-candidates"].strip(),
            cut_method=str(values["cut-method"]),
            sync=sync_settings(values),
            emulate=_flag(values, "emulate"),
            client_devices=str(values["client-devices"]),
            helper_devices=str(values["helper-devices"]),
            emulation_host=str(values["emulation-host"]),
            emulation_memory_scale=_number(values, "emulation-memory-scale"),
            slowdown=str(values["slowdown"]),
            link_mbps=str(values["link-mbps"]),
            link_latency_ms=_number(values, "link-latency-ms"),
            helper_link_mbps=str(values["helper-link-mbps"] or "").strip(),
            helper_link_latency_ms=_number(values, "helper-link-latency-ms"),
            seed=_integer(values, "seed"),
            values=values,
        )

    @classmethod
    def of(cls, config: RunConfig | Mapping[str, Any] | None) -> RunConfig:
        """``config`` itself if it is parsed already, else :meth:`parse` of it."""
        return config if isinstance(config, RunConfig) else cls.parse(config)

    @property
    def planned(self) -> bool:
        """Whether a planner (not round-robin) plans every round."""
        return self.planner != ROUND_ROBIN

    @property
    def planned_chains(self) -> bool:
        """Whether the planner plans every client's helper chain (a planner and
        ``chain-length`` ``"auto"`` or above 1, local batches, split mode)."""
        return (self.planned and self.mode == "split" and self.chain.length > 1
                and not self.sync.sync)

    def as_dict(self) -> dict[str, Any]:
        """Every value, defaults included: what user code and Flower records receive."""
        return dict(self.values)

    def replace(self, **values: Any) -> RunConfig:
        """A copy with some raw keys changed (``replace(**{"cuts": "conv2,fc1"})``)."""
        return RunConfig.parse(self.values, values)


__all__ = [
    "CLIENT_PARTS",
    "CODECS",
    "COMPRESS_ACTIVATIONS",
    "COMPRESS_GRADIENTS",
    "DEFAULT_RUN_CONFIG",
    "HELPER_MEMORY_MODES",
    "MAX_CHAIN_LENGTH",
    "MODES",
    "PROXIMAL_TERMS",
    "RESUMABLE_KEYS",
    "ROUND_ROBIN",
    "SAMPLERS",
    "SAMPLER_SPEEDS",
    "ChainSettings",
    "CodecSetting",
    "RunConfig",
    "SyncSettings",
    "chain_settings",
    "check_modes",
    "helper_links",
    "parse_codec",
    "sync_settings",
]
