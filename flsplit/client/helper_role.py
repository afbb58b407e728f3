"""A helper's handler: serve the body to the clients listed in the ``train.helper``
message until all of them finished or the round deadline passes, then return one body
per client and the helper's metrics.

In a chain a helper serves one piece of each listed client's body (``client-piece``: the
part index in the client's ``client-cuts``) and relays to the next hop (``client-next``,
``client-next-token``); it dials the next hop like a client does, over TLS when its node
config names ``data-tls-root-cert``. With ``helper-memory = "shared"`` the clients of the
same cuts and piece train one body between them.

When the message carries a schedule (``schedule-counts``: global sampling), the helper
runs synchronous steps (:mod:`flsplit.runtime.syncplane`): one shared body behind a step
barrier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore import log

from flsplit.client.node import ROLE_HELPER, client_tls, helper_tls, node_emulation, peak_rss_mib
from flsplit.client.records import load_part, state_dict_of
from flsplit.plan.sampling.samplers import unpack_schedule
from flsplit.runtime.auth import TokenVerifier
from flsplit.runtime.dataplane import HelperClient, HelperServer
from flsplit.runtime.syncplane import SyncHelperServer, SyncWorker
from flsplit.runtime.worker import MEMORY_MODES, HelperWorker, TaskRecord, TensorSpec
from flsplit.task import SplitTask


def serve_helper_round(
    msg: Message, context: Context, task: SplitTask, config: Mapping[str, Any]
) -> Message:
    """Serve this round's clients their bodies (or body pieces) and reply with them.

    Parameters
    ----------
    msg : Message
        The ``train.helper`` message: the model's weights in ``arrays``, the clients to
        serve and their cuts, pieces and next hops in its config.
    context : Context
        The helper's context (its node config names its TLS material).
    task : SplitTask
        Model, data, loss and optimizer.
    config : Mapping
        The round's settings (run config and the message's config).

    Returns
    -------
    Message
        ``body.<client>`` weights of each client that finished, the helper's metrics,
        the finished clients and the timeline of executed tasks.
    """
    state = state_dict_of(msg.content["arrays"])
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
    bodies, specs = _build_bodies(
        task, config, state, example, clients, client_cuts, pieces, memory_mode
    )
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
        # nothing serves the worker's thread or the dialled hops if the server never starts
        worker.stop()
        for hop in next_hops.values():
            hop.close()
        raise
    return _serve_round(msg, config, clients, worker, server, relaying=len(next_hops))


def _build_bodies(
    task: SplitTask,
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    example: torch.Tensor,
    clients: Sequence[str],
    client_cuts: Sequence[str],
    pieces: Sequence[int],
    memory_mode: str,
) -> tuple[dict[str, torch.nn.Module], dict[str, TensorSpec]]:
    """Each client's body piece with the round's weights, and the spec of its input.

    In ``shared`` memory mode the clients of the same cuts and piece get the same module.
    """
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
        load_part(bodies[client], state)
        if part not in spec_of_part:
            spec_of_part[part] = _input_spec(split, example, piece)
        specs[client] = spec_of_part[part]
    return bodies, specs


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
    load_part(split.body, state)
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


def _mean_ms(tasks: Iterable[TaskRecord]) -> float:
    durations = [t.end - t.start for t in tasks]
    return 1000.0 * sum(durations) / len(durations) if durations else 0.0
