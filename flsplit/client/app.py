"""Flower ``ClientApp`` support for both roles of split learning.

:func:`enable_split_learning` adds three message handlers to any ``ClientApp``, under
message types of their own so that the app's ``train`` and ``evaluate`` stay as they are:

- ``query.split``: report role, example count, device information and (helpers) the
  data-plane address.
- ``train.split``: a client trains its head and tail through its helper.
- ``train.helper``: a helper serves the body to the clients listed in the message until
  all of them finished or the round deadline passes, then returns one body per client.
  In a chain it serves one piece of each listed client's body (``client-piece``: the
  part index in the client's ``client-cuts``) and relays to the next hop
  (``client-next``, ``client-next-token``); it dials the next hop like a client does,
  over TLS when its node config names ``data-tls-root-cert``.

When the train messages carry a schedule (``schedule-shape``, ``schedule-counts``: global
sampling, run config ``sampler``), both roles run synchronous steps
(:mod:`flsplit.runtime.syncplane`): the helper one shared body behind a step barrier,
the client its scheduled samples per global step.

:func:`make_client_app` builds a complete app from a :class:`~flsplit.task.SplitTask`:
the three handlers plus ``train`` (plain local training of the full model, for FedAvg
comparison runs) and ``evaluate`` (the full global model on the client's validation data;
the body runs on the client for evaluation, which needs no helper and no labels leave it).

The role comes from the node config key ``role`` (``"client"`` or ``"helper"``) in
deployment. In simulation, where node configs only carry ``partition-id`` and
``num-partitions``, the first ``num-helpers`` partitions (run config) are helpers and the
others are clients with data partitions ``0 .. num-partitions - num-helpers - 1``.

The data plane runs over TLS when the helper's node config names a certificate and key
(``data-tls-cert``, ``data-tls-key``, PEM files) and each client's node config the root
certificate to check it against (``data-tls-root-cert``; ``data-tls-server-name`` if the
certificate names the helper differently from its advertised address); plaintext
otherwise.
"""

from __future__ import annotations

import itertools
import os
import platform
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from flsplit.model.presets import preset
from flsplit.plan.sampling.samplers import unpack_schedule
from flsplit.runtime import emulation
from flsplit.runtime.auth import TokenVerifier
from flsplit.runtime.dataplane import HelperClient, HelperServer, read_pem
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.syncplane import SyncHelperServer, SyncWorker, train_sync
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import MEMORY_MODES, HelperWorker, TaskRecord, TensorSpec
from flsplit.task import SplitTask, evaluate_model, train_full

ROLE_CLIENT = "client"
ROLE_HELPER = "helper"
SPLIT_ACTION = "split"
HELPER_ACTION = "helper"


def node_role(context: Context, config: Mapping[str, Any]) -> str:
    """Return ``"client"`` or ``"helper"`` for the node running ``context``."""
    role = context.node_config.get("role")
    if role is not None:
        if role not in (ROLE_CLIENT, ROLE_HELPER):
            raise ValueError(
                f"node config role={role!r} is not 'client' or 'helper'; start the SuperNode "
                "with --node-config 'role=\"client\"' or 'role=\"helper\"'"
            )
        return str(role)
    partition = context.node_config.get("partition-id")
    if partition is None:
        return ROLE_CLIENT
    return ROLE_HELPER if int(partition) < int(config["num-helpers"]) else ROLE_CLIENT


def data_partition(context: Context, config: Mapping[str, Any]) -> tuple[int, int]:
    """Return ``(partition_id, num_partitions)`` of a client's data."""
    node = context.node_config
    if "role" in node:  # deployment: the node config names its partition directly
        return int(node.get("partition-id", 0)), int(node.get("num-partitions", 1))
    helpers = int(config["num-helpers"])
    partition = int(node.get("partition-id", helpers))
    total = int(node.get("num-partitions", helpers + 1))
    if total <= helpers:
        raise ValueError(
            f"num-helpers={helpers} leaves no client among {total} simulated nodes; "
            "raise num-supernodes or lower num-helpers"
        )
    return partition - helpers, total - helpers


def simulation_concurrency(config: Mapping[str, Any] | None = None) -> int | None:
    """ClientApp calls the simulation engine runs at once, or None outside Ray.

    The smaller of what the Ray backend's resources allow and the engine's own limit on
    concurrent calls: ``simulation-workers`` when ``flsplit simulate`` set it, else
    Python's default thread-pool size on this machine, ``min(32, cpus + 4)``.
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
    engine = int((config or {}).get("simulation-workers", 0)) or min(32, (os.cpu_count() or 1) + 4)
    return min(int(total / assigned + 1e-9), engine)


def node_index(context: Context, config: Mapping[str, Any], role: str) -> int:
    """A node's index within its role: data partition (clients) or helper number."""
    if role == ROLE_CLIENT:
        return data_partition(context, config)[0]
    return int(context.node_config.get("helper-index", context.node_config.get("partition-id", 0)))


def node_device(context: Context, config: Mapping[str, Any], role: str) -> str:
    """The device preset a node runs as: node config ``device``, else drawn (emulation)."""
    device = context.node_config.get("device")
    if device:
        return str(device)
    if config.get("emulate"):
        return emulation.device_for(role, node_index(context, config, role), config)
    return ""


def node_emulation(
    context: Context, config: Mapping[str, Any], role: str, link: bool = False
) -> Emulation:
    """The emulation a node applies this round (none unless ``emulate`` is set)."""
    if not config.get("emulate"):
        return NO_EMULATION
    index = node_index(context, config, role)
    factor = emulation.compute_factor(node_device(context, config, role), config)
    factor *= emulation.slowdown(role, index, int(config.get("server-round", 0)), config)
    rate = float(config.get("link-mbps", 0.0)) if link else 0.0
    latency = float(config.get("link-latency-ms", 0.0)) if link else 0.0
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
    ``data-tls-key``, or ``None`` (plaintext) if neither is set."""
    node = context.node_config
    cert, key = node.get("data-tls-cert"), node.get("data-tls-key")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("node config: data-tls-cert and data-tls-key go together")
    return read_pem(str(cert), "data-tls-cert"), read_pem(str(key), "data-tls-key")


def client_tls(context: Context) -> tuple[bytes | None, str | None]:
    """A client's root certificate (node config ``data-tls-root-cert``) and expected
    server name (``data-tls-server-name``); ``(None, None)`` means plaintext."""
    node = context.node_config
    root = node.get("data-tls-root-cert")
    name = node.get("data-tls-server-name")
    return (read_pem(str(root), "data-tls-root-cert") if root else None), (
        str(name) if name else None
    )


def _round_verifier(config: Mapping[str, Any], context: Context,
                    clients: Sequence[str]) -> TokenVerifier:
    """The helper's check of this round's client tokens."""
    return TokenVerifier(
        bytes(config["token-key"]),
        run_id=context.run_id,
        server_round=int(config["server-round"]),
        helper=context.node_id,
        clients=clients,
    )


def _server_options(config: Mapping[str, Any], cert_key: tuple[bytes, bytes] | None
                    ) -> dict[str, Any]:
    """Data-plane server settings of the run config (address, deadlines, TLS)."""
    return {
        "address": str(config["listen-address"]),
        "task_timeout": float(config["call-deadline"]),
        "tls_cert": cert_key[0] if cert_key else None,
        "tls_key": cert_key[1] if cert_key else None,
        "idle_timeout": float(config["client-idle-timeout"]) or None,
    }


def _input_spec(split: Any, example: torch.Tensor, piece: int = 1) -> TensorSpec:
    """Shape (without batch) and dtype of the input of part ``piece`` (the body, or a
    chain's piece), from the parts before it on an example."""
    out = example
    with torch.no_grad():
        for part in split.parts[:piece]:
            part.eval()
            out = part(out)
    return TensorSpec(tuple(out.shape[1:]), out.dtype)


def _config_of(message: Message) -> dict[str, Any]:
    records = message.content.config_records
    return dict(records["config"]) if "config" in records else {}


def _state_dict(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return arrays.to_torch_state_dict()


def _load_part(part: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    keys = part.state_dict().keys()
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"train message lacks weights for {missing[:3]} (+{len(missing)} keys)")
    part.load_state_dict({k: state[k] for k in keys}, strict=True)


def enable_split_learning(
    app: ClientApp, task: SplitTask, run_config: Mapping[str, Any] | None = None
) -> ClientApp:
    """Register the split-learning handlers of both roles on ``app``.

    Parameters
    ----------
    app : ClientApp
        An app built with the ``@app.train()`` / ``@app.evaluate()`` decorators (its own
        handlers are kept).
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping, optional
        Settings used where the run config is silent (``flwr run`` passes the app's
        ``[tool.flwr.app.config]``; the Python simulation API passes none).

    Returns
    -------
    ClientApp
        ``app`` itself.
    """
    base_config = dict(run_config or {})

    def settings(msg: Message | None, context: Context) -> dict[str, Any]:
        config = task.config({**base_config, **dict(context.run_config)})
        if msg is not None:
            config.update(_config_of(msg))
        threads = int(config.get("torch-threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)
        return config

    @app.query(SPLIT_ACTION)
    def query(msg: Message, context: Context) -> Message:
        config = settings(None, context)
        role = node_role(context, config)
        info: dict[str, Any] = {
            "role": role,
            "device": platform.machine() or "unknown",
            "cpus": os.cpu_count() or 1,
            "torch-threads": torch.get_num_threads(),
        }
        concurrency = simulation_concurrency(config)
        if concurrency is not None:
            info["simulation-concurrency"] = concurrency
        device = node_device(context, config, role)
        info["index"] = node_index(context, config, role)
        if device:
            info["device"] = device
            info["compute-factor"] = node_emulation(context, config, role).compute_factor
            info["memory-mib"] = float(preset(device).memory_mib)
        examples = 0
        if role == ROLE_HELPER:
            listen, advertised = helper_addresses(context)
            info["listen-address"], info["address"] = listen, advertised
        else:
            partition, partitions = data_partition(context, config)
            train, _ = task.load_data(partition, partitions, config)
            examples = _count_examples(train, task)
        reply = RecordDict(
            {"info": ConfigRecord(info), "metrics": MetricRecord({"num-examples": examples})}
        )
        return Message(reply, reply_to=msg)

    @app.train(SPLIT_ACTION)
    def train(msg: Message, context: Context) -> Message:
        config = settings(msg, context)
        partition, partitions = data_partition(context, config)
        train_data, _ = task.load_data(partition, partitions, config)
        state = _state_dict(msg.content["arrays"])
        split = task.split(config)
        head, tail = split.head, split.tail
        _load_part(head, state)
        _load_part(tail, state)
        optimizer = task.optimizer_fn(itertools.chain(head.parameters(), tail.parameters()), config)
        root_cert, server_name = client_tls(context)
        with HelperClient(
            str(config["helper-address"]),
            client=str(context.node_id),
            token=str(config["round-token"]),
            deadline=float(config["call-deadline"]),
            tls_root_cert=root_cert,
            tls_server_name=server_name,
        ) as helper:
            emulation = node_emulation(context, config, ROLE_CLIENT, link=True)
            if "schedule-counts" in config:  # global sampling: synchronous steps
                counts = unpack_schedule(config)
                if counts.shape[1] != 1:
                    raise ValueError(f"schedule of shape {counts.shape} is not one column")
                result = train_sync(
                    head,
                    tail,
                    helper,
                    _all_samples(task, train_data),
                    counts[:, 0],
                    task.loss_fn,
                    optimizer,
                    client_parts=str(config.get("client-parts", "shared")),
                    seed=int(config.get("sampler-seed", 0)) * 100_003 + partition,
                    offset=int(config.get("sample-offset", 0)),
                    emulation=emulation,
                )
            else:
                result = train_split(
                    head,
                    tail,
                    helper,
                    task.batches(train_data),
                    task.loss_fn,
                    optimizer,
                    int(config["local-epochs"]),
                    emulation=emulation,
                    micro_batches=int(config.get("micro-batches", 1)),
                )
        arrays = ArrayRecord({**head.state_dict(), **tail.state_dict()})
        metrics = {
            "num-examples": result.examples,
            "train_loss": result.loss,
            "train_acc": result.accuracy,
            "batches": result.batches,
            "stage1-ms": result.stage1_ms,
            "stage3-ms": result.stage3_ms,
            "stage5-ms": result.stage5_ms,
            "helper-service-ms": result.helper_service_ms,
            "started": result.started,
            "ended": result.ended,
        }
        return _reply(msg, arrays, metrics)

    @app.train(HELPER_ACTION)
    def serve(msg: Message, context: Context) -> Message:
        config = settings(msg, context)
        state = _state_dict(msg.content["arrays"])
        cert_key = helper_tls(context)  # before anything starts: a bad path fails cleanly
        clients = [str(c) for c in config["clients"]]
        client_cuts = [str(c) for c in config.get("client-cuts", [config["cuts"]] * len(clients))]
        pieces = [int(p) for p in config.get("client-piece", [1] * len(clients))]
        nexts = [str(a) for a in config.get("client-next", [""] * len(clients))]
        next_tokens = [str(t) for t in config.get("client-next-token", [""] * len(clients))]
        memory_mode = str(config.get("helper-memory", "per-client"))
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"helper-memory: {memory_mode!r} is not one of "
                             f"{', '.join(MEMORY_MODES)}")
        example = task.example_input(config)
        if "schedule-counts" in config:  # global sampling: synchronous steps
            return _serve_sync(msg, context, config, task, state, clients, client_cuts, cert_key)
        bodies, specs, spec_of_part, body_of_part = {}, {}, {}, {}
        for client, cuts, piece in zip(clients, client_cuts, pieces, strict=True):
            part = (cuts, piece)
            if memory_mode == "shared" and part in body_of_part:
                # one body per piece, trained by all its clients (HelperWorker docs)
                bodies[client], specs[client] = body_of_part[part], spec_of_part[part]
                continue
            split = task.split({**config, "cuts": cuts})
            if not 1 <= piece < len(split.parts) - 1:
                raise ValueError(
                    f"client-piece {piece} is not a body piece of cuts {cuts!r} "
                    f"(1 .. {len(split.parts) - 2})"
                )
            bodies[client] = body_of_part[part] = split.parts[piece]
            _load_part(bodies[client], state)
            if part not in spec_of_part:
                spec_of_part[part] = _input_spec(split, example, piece)
            specs[client] = spec_of_part[part]
        order = [tuple(item.split(":", 1)) for item in config.get("order", [])]
        worker = HelperWorker(
            bodies,
            lambda params: task.optimizer_fn(params, config),
            order=order,
            emulation=node_emulation(context, config, ROLE_HELPER),
            input_specs=specs,
            memory_mode=memory_mode,
        )
        verifier = _round_verifier(config, context, clients)
        next_hops: dict[str, HelperClient] = {}
        try:
            root_cert, server_name = client_tls(context) if any(nexts) else (None, None)
            for client, address, token in zip(clients, nexts, next_tokens, strict=True):
                if address:  # this helper is not the last of the client's chain
                    next_hops[client] = HelperClient(
                        address,
                        client=client,
                        token=token,
                        deadline=float(config["call-deadline"]),
                        tls_root_cert=root_cert,
                        tls_server_name=server_name,
                    )
            server = HelperServer(
                worker,
                verifier,
                **_server_options(config, cert_key),
                next_hops=next_hops,
                in_flight=int(config.get("micro-batches", 1)) + 1,
            ).start()
        except Exception:
            worker.stop()
            for hop in next_hops.values():
                hop.close()
            raise
        return _serve_round(msg, config, clients, worker, server, relaying=len(next_hops))

    return app


def _serve_round(
    msg: Message,
    config: Mapping[str, Any],
    clients: list[str],
    worker: HelperWorker | SyncWorker,
    server: HelperServer,
    extra: Callable[[], Mapping[str, Any]] | None = None,
    relaying: int = 0,
) -> Message:
    """Serve the round's clients, then reply with their bodies and the helper's metrics
    (and ``extra()``'s, read after the round); ``relaying`` clients' chains go on to a
    next hop."""
    start = time.perf_counter()
    log(
        INFO,
        "helper serving %d clients on %s (%s)%s",
        len(clients),
        server.address,
        "TLS" if server.tls else "plaintext",
        f", relaying {relaying} of them to a next hop" if relaying else "",
    )
    try:
        all_done = server.wait_clients(float(config["round-timeout"]))
    finally:
        server.stop()
    if server.dropped:
        log(WARNING, "helper: dropped idle clients %s", sorted(server.dropped))
    if not all_done:
        missing = sorted(set(clients) - set(server.finished) - set(server.dropped))
        log(WARNING, "helper: clients %s did not finish before the round deadline", missing)
    content = RecordDict()
    records: dict[int, ArrayRecord] = {}  # shared mode: one record per shared body
    for client in server.finished:
        state = worker.bodies.get(client)
        if state is not None:
            if id(state.module) not in records:
                records[id(state.module)] = ArrayRecord(state.module.state_dict())
            content[f"body.{client}"] = records[id(state.module)]
    tasks = worker.executed
    content["metrics"] = MetricRecord(
        {
            "clients-finished": len(server.finished),
            "clients-dropped": len(server.dropped),
            "busy-seconds": sum(t.end - t.start for t in tasks),
            "wall-seconds": time.perf_counter() - start,
            "refused": server.refused_count,
            "invalid-requests": server.invalid_count,
            "tasks": len(tasks),
            "peak-rss-mib": peak_rss_mib(),
            "body-fwd-ms": _mean_ms(t for t in tasks if t.kind == "fwd"),
            "body-bwd-ms": _mean_ms(t for t in tasks if t.kind == "bwd"),
            **(dict(extra()) if extra is not None else {}),
        }
    )
    content["config"] = ConfigRecord({"finished": sorted(server.finished)})
    content["timeline"] = ConfigRecord(
        {
            "client": [t.client for t in tasks],
            "kind": [t.kind for t in tasks],
            "start": [t.start for t in tasks],
            "end": [t.end for t in tasks],
        }
    )
    return Message(content, reply_to=msg)


def _serve_sync(
    msg: Message,
    context: Context,
    config: Mapping[str, Any],
    task: SplitTask,
    state: Mapping[str, torch.Tensor],
    clients: list[str],
    client_cuts: list[str],
    cert_key: tuple[bytes, bytes] | None,
) -> Message:
    """A helper's round of synchronous steps: one shared body behind a step barrier."""
    if len(set(client_cuts)) > 1:
        raise ValueError(
            f"synchronous steps run one shared body, but the clients have different cuts "
            f"{sorted(set(client_cuts))}; give every client the same cuts"
        )
    counts = unpack_schedule(config)
    if counts.shape[1] != len(clients):
        raise ValueError(
            f"schedule of shape {counts.shape} does not have one column per client "
            f"({len(clients)})"
        )
    cuts = client_cuts[0] if client_cuts else str(config["cuts"])
    split = task.split({**config, "cuts": cuts})
    _load_part(split.body, state)
    grad_size = sum(p.numel() for part in (split.head, split.tail) for p in part.parameters())
    worker = SyncWorker(
        split.body,
        clients,
        counts,
        lambda params: task.optimizer_fn(params, config),
        input_spec=_input_spec(split, task.example_input(config)),
        client_parts=str(config.get("client-parts", "shared")),
        grad_size=grad_size,
        emulation=node_emulation(context, config, ROLE_HELPER),
    )
    verifier = _round_verifier(config, context, clients)
    try:
        server = SyncHelperServer(
            worker,
            verifier,
            **_server_options(config, cert_key),
        ).start()
    except Exception:
        worker.stop()
        raise
    def metrics() -> dict[str, Any]:
        return {
            "sync-steps": len(worker.step_examples),
            "step-examples": list(worker.step_examples) or [0],
            "step-clients": list(worker.step_clients) or [0],
        }

    return _serve_round(msg, config, clients, worker, server, metrics)


def make_client_app(task: SplitTask, run_config: Mapping[str, Any] | None = None) -> ClientApp:
    """Build a complete ``ClientApp`` for ``task``.

    Parameters
    ----------
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping, optional
        Settings used where the run config is silent.

    Returns
    -------
    ClientApp
        The split-learning handlers of :func:`enable_split_learning`, plus ``train``
        (plain local training of the full model) and ``evaluate`` (the full global model
        on the client's validation data).
    """
    app = ClientApp()
    base_config = dict(run_config or {})

    def settings(msg: Message, context: Context) -> dict[str, Any]:
        return {**task.config({**base_config, **dict(context.run_config)}), **_config_of(msg)}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = settings(msg, context)
        partition, partitions = data_partition(context, config)
        train_data, _ = task.load_data(partition, partitions, config)
        model = task.model_fn(config)
        model.load_state_dict(_state_dict(msg.content["arrays"]), strict=True)
        optimizer = task.optimizer_fn(model.parameters(), config)
        loss, acc, examples = train_full(
            model, task.batches(train_data), task.loss_fn, optimizer, int(config["local-epochs"])
        )
        metrics = {"num-examples": examples, "train_loss": loss, "train_acc": acc}
        return _reply(msg, ArrayRecord(model.state_dict()), metrics)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config = settings(msg, context)
        partition, partitions = data_partition(context, config)
        _, val_data = task.load_data(partition, partitions, config)
        model = task.model_fn(config)
        model.load_state_dict(_state_dict(msg.content["arrays"]), strict=True)
        loss, acc, examples = evaluate_model(model, task.batches(val_data), task.loss_fn)
        metrics = MetricRecord({"num-examples": examples, "eval_loss": loss, "eval_acc": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return enable_split_learning(app, task, run_config)


def _reply(msg: Message, arrays: ArrayRecord, metrics: Mapping[str, float | int]) -> Message:
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(dict(metrics))})
    return Message(content, reply_to=msg)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux and macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _mean_ms(tasks: Iterable[TaskRecord]) -> float:
    durations = [t.end - t.start for t in tasks]
    return 1000.0 * sum(durations) / len(durations) if durations else 0.0


def _all_samples(task: SplitTask, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a client's training samples as two tensors (the loader's dataset when it is
    a ``TensorDataset``, in its stored order; else the batches concatenated)."""
    tensors = getattr(getattr(loader, "dataset", None), "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) == 2:
        return tensors[0], tensors[1]
    pairs = list(task.batches(loader))
    if not pairs:
        raise ValueError("the client has no training data for synchronous steps")
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


def _count_examples(batches: Any, task: SplitTask) -> int:
    dataset = getattr(batches, "dataset", None)
    if dataset is not None:
        return len(dataset)
    return sum(int(labels.shape[0]) for _, labels in task.batches(batches))
