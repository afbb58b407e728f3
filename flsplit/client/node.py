"""What a node is: its role, data partition, index, device and emulation, its data-plane
addresses and TLS material, and the concurrency of the simulation engine it runs in.

The role comes from the node config key ``role`` (``"client"`` or ``"helper"``) in
deployment. In simulation, where node configs only carry ``partition-id`` and
``num-partitions``, the first ``num-helpers`` partitions (run config) are helpers and the
others are clients with data partitions ``0 .. num-partitions - num-helpers - 1``. While a
message is handled, a client's node config shows that data partition
(:func:`client_partition_view`), so the app's own handlers (``evaluate``, ``query``, ...)
and flsplit's load the same data.

A client's node config may set ``compress-activations`` and ``compress-gradients`` (the
run config's spellings) for its own link to its helper(s), over the run config's
(:func:`node_codecs`): a client on a slow uplink compresses while the others do not. A
helper's node config may set them for the links to its next hops in helper chains
(otherwise every hop uses the client's codecs). A helper's node config may name the
helpers it has a link with (``helper-links``, their indices: ``"1,2"``;
:func:`node_helper_links`), for helper chains. Nodes report all of these to the
server when it discovers them, so that its planner charges each link's coded bytes and
routes chains over existing links only.

The data plane runs over TLS when the helper's node config names a certificate and key
(``data-tls-cert``, ``data-tls-key``, PEM files) and each client's node config the root
certificate to check it against (``data-tls-root-cert``; ``data-tls-server-name`` if the
certificate names the helper differently from its advertised address); plaintext
otherwise. The README's "Securing a deployment" makes them with a CA of one's own, next to
Flower's control-plane TLS and SuperNode authentication, with the commands
``tests/e2e/test_secure_deployment.py`` runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from flwr.app import Context

from flsplit.config import (
    COMPRESS_ACTIVATIONS,
    COMPRESS_GRADIENTS,
    HELPER_LINKS,
    CodecSetting,
    RunConfig,
    parse_codec,
    reached_helpers,
)
from flsplit.protocol import ROLE_CLIENT, ROLE_HELPER, ROLES
from flsplit.runtime import emulation
from flsplit.runtime.dataplane import read_pem
from flsplit.runtime.emulation import NO_EMULATION, Emulation


def node_role(context: Context, config: RunConfig | Mapping[str, Any]) -> str:
    """Return the role of the node running ``context``.

    Parameters
    ----------
    context : Context
        The node's context; its node config ``role`` decides in deployment.
    config : Mapping
        The run config; ``num-helpers`` decides in simulation.

    Returns
    -------
    str
        ``"client"`` or ``"helper"``.

    Raises
    ------
    ValueError
        If the node config names another role.
    """
    role = context.node_config.get("role")
    if role is not None:
        if role not in ROLES:
            raise ValueError(
                f"node config role={role!r} is not 'client' or 'helper'; start the SuperNode "
                "with --node-config 'role=\"client\"' or 'role=\"helper\"'"
            )
        return str(role)
    simulated = simulated_node(context)
    if simulated is None:
        return ROLE_CLIENT
    return ROLE_HELPER if simulated[0] < RunConfig.of(config).num_helpers else ROLE_CLIENT


def check_simulation_roles(context: Context, declared: bool) -> None:
    """Refuse a simulation whose run config does not say how many nodes are helpers.

    ``declared``: whether the app's run config (its ``pyproject.toml``, the run's
    overrides or the app's own defaults) sets ``num-helpers``. Without it every node would
    silently take flsplit's default of one helper, and Flower would refuse
    ``--run-config num-helpers=...`` for a key the app's ``pyproject.toml`` lacks.

    Raises
    ------
    ValueError
        Naming the key and where to add it.
    """
    if declared or simulated_node(context) is None:
        return
    raise ValueError(
        "run config has no num-helpers: in simulation flsplit makes the first num-helpers "
        "nodes helpers and the others clients. Add it under [tool.flwr.app.config] in the "
        "app's pyproject.toml, e.g. `num-helpers = 2` (Flower accepts --run-config only for "
        "keys that table has)"
    )


#: The simulation's own (partition-id, num-partitions) of the node whose message is being
#: handled while its node config shows the client's data partition instead.
_SIMULATED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "flsplit_simulated_node", default=None
)


def simulated_node(context: Context) -> tuple[int, int] | None:
    """The simulation engine's ``(partition-id, num-partitions)`` of this node, or
    ``None`` outside simulation (a node config with ``role`` or without ``partition-id``)."""
    shown = _SIMULATED.get()
    if shown is not None:
        return shown
    node = context.node_config
    if "role" in node or "partition-id" not in node:
        return None
    partition = int(node["partition-id"])
    return partition, int(node.get("num-partitions", partition + 1))


@contextlib.contextmanager
def client_partition_view(
    context: Context, config: RunConfig | Mapping[str, Any]
) -> Iterator[None]:
    """In simulation, let a client's node config show its data partition while a message
    is handled: ``partition-id`` and ``num-partitions`` become the client's
    (:func:`data_partition`), so the app's own handlers load the data flsplit trains on.
    Restored afterwards; helpers and deployed nodes are left as they are."""
    simulated = simulated_node(context)
    if simulated is None or _SIMULATED.get() is not None:
        yield
        return
    node = context.node_config
    shown = data_partition(context, config) if node_role(context, config) == ROLE_CLIENT else None
    token = _SIMULATED.set(simulated)
    try:
        if shown is not None:
            node["partition-id"], node["num-partitions"] = shown
        yield
    finally:
        if shown is not None:
            node["partition-id"], node["num-partitions"] = simulated
        _SIMULATED.reset(token)


def check_partition_view(context: Context) -> None:
    """Refuse a simulated node's split-learning message handled outside
    :func:`client_partition_view`: the app replaced the lifespan that installs it.

    Raises
    ------
    RuntimeError
        Naming the fix: register the app's own lifespan before ``enable_split_learning``.
    """
    if _SIMULATED.get() is None and simulated_node(context) is not None:
        raise RuntimeError(
            "this ClientApp's lifespan is not the one enable_split_learning installed: an "
            "`@app.lifespan()` registered after `enable_split_learning(app, ...)` replaced it, "
            "so the app's own handlers would see other data partitions than flsplit's. "
            "Register the app's lifespan first and call enable_split_learning after it "
            "(flsplit wraps it)"
        )


def data_partition(
    context: Context, config: RunConfig | Mapping[str, Any]
) -> tuple[int, int]:
    """Return ``(partition_id, num_partitions)`` of a client's data.

    In simulation the helpers hold the first ``num-helpers`` node partitions, so the
    clients' data partitions are the node partitions shifted down by ``num-helpers``.

    Raises
    ------
    ValueError
        If the simulation has no node left for a client.
    """
    node = context.node_config
    simulated = simulated_node(context)
    if simulated is None:  # deployment: the node config names its partition directly
        return int(node.get("partition-id", 0)), int(node.get("num-partitions", 1))
    helpers = RunConfig.of(config).num_helpers
    partition, total = simulated
    if total <= helpers:
        raise ValueError(
            f"num-helpers={helpers} leaves no client among {total} simulated nodes; "
            "raise num-supernodes or lower num-helpers"
        )
    return partition - helpers, total - helpers


def simulation_concurrency() -> int | None:
    """ClientApp calls the Ray backend runs at once, or None outside Ray.

    Ray's CPUs over each node's share. The engine's own limit on concurrent calls
    (:func:`flsplit.engine.engine_limit`) is known in the engine's process, where the
    ServerApp checks both.
    """
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
    total = ray.cluster_resources().get("CPU")
    if not assigned or not total:
        return None
    return int(total / assigned + 1e-9)


def node_index(context: Context, config: RunConfig | Mapping[str, Any], role: str) -> int:
    """A node's index within its role: data partition (clients) or helper number."""
    if role == ROLE_CLIENT:
        return data_partition(context, config)[0]
    return int(context.node_config.get("helper-index", context.node_config.get("partition-id", 0)))


#: Node config ``device`` values that name where torch computes rather than a preset.
_COMPUTE_DEVICE = re.compile(r"^(auto|cpu|cuda|mps|xpu)(:\d+)?$")


def compute_device(context: Context) -> torch.device:
    """Where this node computes: node config ``device`` when it names a torch device
    (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), else ``auto``: the GPU when
    torch sees one, the CPU otherwise.

    Raises
    ------
    ValueError
        If the node config names a device this machine does not have.
    """
    value = str(context.node_config.get("device") or "auto")
    if not _COMPUTE_DEVICE.match(value) or value == "auto":  # a preset name, or auto
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(
                f"node config device={value!r}: this node has {count} CUDA device(s); start "
                "the SuperNode with --node-config 'device=\"auto\"' or 'device=\"cpu\"'"
            )
    return device


def node_device(context: Context, config: RunConfig | Mapping[str, Any], role: str) -> str:
    """The device preset a node runs as: node config ``device`` (unless it names a torch
    device, :func:`compute_device`), else drawn (emulation).

    Returns ``""`` when neither names one.
    """
    device = context.node_config.get("device")
    if device and not _COMPUTE_DEVICE.match(str(device)):
        return str(device)
    config = RunConfig.of(config)
    if config.emulate:
        return emulation.device_for(role, node_index(context, config, role), config)
    return ""


def node_emulation(
    context: Context,
    config: RunConfig | Mapping[str, Any],
    role: str,
    server_round: int = 0,
    link: tuple[float, float] | None = None,
) -> Emulation:
    """The emulation a node applies this round (none unless ``emulate`` is set).

    Parameters
    ----------
    context : Context
        The node's context.
    config : RunConfig or Mapping
        The run config.
    role : str
        ``"client"`` or ``"helper"``.
    server_round : int
        The round (the run config's ``slowdown`` may start at a round).
    link : (float, float), optional
        The emulated link's rate (Mbit/s) and latency (ms) to the helper a client dials,
        as the server planned them (:class:`flsplit.protocol.ClientRound`).
    """
    config = RunConfig.of(config)
    if not config.emulate:
        return NO_EMULATION
    index = node_index(context, config, role)
    factor = emulation.compute_factor(node_device(context, config, role), config)
    factor *= emulation.slowdown(role, index, server_round, config)
    rate, latency = link if link is not None else (0.0, 0.0)
    return Emulation(compute_factor=factor, rate_mbps=rate, latency_ms=latency)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def helper_addresses(context: Context) -> tuple[str, str]:
    """Return ``(listen, advertised)`` data-plane addresses of a helper.

    Deployment: node config ``data-address`` (default ``0.0.0.0:9800``) and
    ``advertise-address`` (default: the listen address with the host name). Simulation:
    a free loopback port.
    """
    node = context.node_config
    if "data-address" in node or "role" in node:
        listen = str(node.get("data-address", "0.0.0.0:9800"))
        host, port = listen.rsplit(":", 1)
        default_adv = f"{socket.gethostname() if host in ('0.0.0.0', '[::]') else host}:{port}"
        return listen, str(node.get("advertise-address", default_adv))
    address = f"127.0.0.1:{free_port()}"
    return address, address


def helper_tls(context: Context) -> tuple[bytes, bytes] | None:
    """The helper's PEM certificate and key from node config ``data-tls-cert`` and
    ``data-tls-key``, or ``None`` (plaintext) if neither is set.

    Raises
    ------
    ValueError
        If only one of the two is set.
    DataPlaneError
        If a file cannot be read or is not PEM.
    """
    node = context.node_config
    cert, key = node.get("data-tls-cert"), node.get("data-tls-key")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("node config: data-tls-cert and data-tls-key go together")
    return read_pem(str(cert), "data-tls-cert"), read_pem(str(key), "data-tls-key")


def client_tls(context: Context) -> tuple[bytes | None, str | None]:
    """A client's root certificate (node config ``data-tls-root-cert``) and expected
    server name (``data-tls-server-name``); ``(None, None)`` means plaintext.

    Raises
    ------
    DataPlaneError
        If the root certificate cannot be read or is not PEM.
    """
    node = context.node_config
    root = node.get("data-tls-root-cert")
    name = node.get("data-tls-server-name")
    return (read_pem(str(root), "data-tls-root-cert") if root else None), (
        str(name) if name else None
    )


def node_codec_overrides(context: Context) -> dict[str, CodecSetting]:
    """The codecs a node's config sets for its own links, by the op they code
    (``"fwd"``: ``compress-activations``, ``"bwd"``: ``compress-gradients``); keys it does
    not set are left out.

    Raises
    ------
    ValueError
        If a node config value is not a codec spelling (naming the key).
    """
    node = context.node_config
    overrides = {}
    for op, key in (("fwd", COMPRESS_ACTIVATIONS), ("bwd", COMPRESS_GRADIENTS)):
        if key in node:
            try:
                overrides[op] = parse_codec(node[key], key)
            except ValueError as err:
                raise ValueError(f"node config: {err}".replace("run config ", "")) from None
    return overrides


def node_codecs(
    context: Context, config: RunConfig | Mapping[str, Any]
) -> tuple[CodecSetting, CodecSetting]:
    """The codecs of a client's activations and gradients: its node config's
    ``compress-activations`` and ``compress-gradients`` where set, else the run config's.

    Raises
    ------
    ValueError
        If a node config value is not a codec spelling (naming the key).
    """
    config = RunConfig.of(config)
    overrides = node_codec_overrides(context)
    return (overrides.get("fwd", config.compress_activations),
            overrides.get("bwd", config.compress_gradients))


def node_helper_links(context: Context) -> frozenset[int] | None:
    """The helper indices a helper's node config ``helper-links`` names (the helpers it
    has a link with), or ``None`` when it names none (every helper the run config allows).

    Raises
    ------
    ValueError
        If the value is not comma-separated helper indices.
    """
    value = context.node_config.get(HELPER_LINKS)
    return None if value is None else reached_helpers(value)
