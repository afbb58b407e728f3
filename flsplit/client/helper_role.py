"""A helper's handler: serve the body to the clients listed in the ``train.helper``
message until all of them finished or the round deadline passes, then return one body
per client and the helper's metrics.

In a chain a helper serves one piece of each listed client's body
(:class:`~flsplit.protocol.ServedClient`: the piece of the client's cuts, the next hop
and the client's token for it) and relays to the next hop; it dials the next hop like a
client does, over TLS when its node config names ``data-tls-root-cert``, and waits out
the emulated link to it the server sends (:func:`next_hop_links`). With
``helper-memory = "shared"`` the clients of the same cuts and piece train one body
between them.

When the round carries a schedule (global sampling), the helper runs synchronous steps
(:mod:`flsplit.runtime.sync_helper`): one shared body behind a step barrier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.supercore import log

from flsplit.client.base_cache import PartState, part_state, without
from flsplit.client.node import (
    client_tls,
    compute_device,
    helper_tls,
    node_codec_overrides,
    node_emulation,
)
from flsplit.client.records import config_of, load_part
from flsplit.config import RunConfig
from flsplit.model.crossing import call_part
from flsplit.protocol import (
    ARRAYS,
    BACKWARD,
    FORWARD,
    ROLE_HELPER,
    HelperResult,
    HelperRound,
    ServedClient,
    TaskSpan,
    with_base_hash,
)
from flsplit.runtime.auth import TokenVerifier
from flsplit.runtime.checks import ActivationSpec, spec_of
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.emulation import Emulation
from flsplit.runtime.helper_client import HelperClient
from flsplit.runtime.memory import peak_rss_mib
from flsplit.runtime.sync_helper import SyncWorker
from flsplit.runtime.sync_server import SyncHelperServer
from flsplit.runtime.worker import HelperWorker, TaskRecord
from flsplit.task import SplitTask


def serve_helper_round(
    msg: Message, context: Context, task: SplitTask, config: RunConfig
) -> Message:
    """Serve this round's clients their bodies (or body pieces) and reply with them.

    Parameters
    ----------
    msg : Message
        The ``train.helper`` message: the model's weights in ``arrays``, a
        :class:`~flsplit.protocol.HelperRound` (the clients to serve, their cuts,
        pieces and next hops) in ``config``.
    context : Context
        The helper's context (its node config names its TLS material).
    task : SplitTask
        Model, data, loss and optimizer.
    config : RunConfig
        The round's settings (run config and the message's config).

    Returns
    -------
    Message
        A :class:`~flsplit.protocol.HelperResult` with the bodies of the clients that
        finished.
    """
    round_ = HelperRound.from_config(config_of(msg))
    cert_key = helper_tls(context)  # before anything starts: a bad path fails cleanly
    clients = [c.client for c in round_.clients]
    example = task.example_input(config.as_dict())
    if round_.schedule is not None:  # global sampling: synchronous steps
        return _serve_sync(msg, context, config, round_, task, cert_key)
    # One set of frozen tensors for every body: per-client bodies share the base's memory
    # (it never changes), a shared body holds it once. Each body is loaded as soon as it
    # is built, so the bases the model builds are dropped one at a time.
    weights = PartState({}, set(), "")
    shared: dict[str, torch.Tensor] = {}
    device = compute_device(context)

    def load(body: torch.nn.Module) -> None:
        loaded = part_state(context, (body,), msg.content[ARRAYS], round_.base_hash, shared)
        for key in loaded.frozen:  # moved to the device once, for every body
            if shared[key].device != device:
                shared[key] = shared[key].to(device)
            loaded.state[key] = shared[key]
        load_part(body, loaded.state, assign=loaded.frozen)
        body.to(device)
        weights.frozen |= loaded.frozen
        weights.held = loaded.held or weights.held

    bodies, specs = _build_bodies(task, config, example, round_.clients, load)
    worker = HelperWorker(
        bodies,
        lambda params: task.optimizer_fn(params, config.as_dict()),
        order=[(t.client, t.kind) for t in round_.order],
        emulation=node_emulation(context, config, ROLE_HELPER, round_.server_round),
        input_specs=specs,
        memory_mode=config.helper_memory,
        proximal_mu=config.proximal_mu,
        proximal_term=config.proximal_term,
    )
    verifier = _round_verifier(round_, context)
    next_hops: dict[str, HelperClient] = {}
    try:
        chained = [c for c in round_.clients if c.next_address]
        root_cert, server_name = client_tls(context) if chained else (None, None)
        # codecs this helper's node config sets for its links to next hops (else the
        # client's, carried by each frame)
        own_codecs = node_codec_overrides(context) if chained else {}
        for served in chained:  # this helper is not the last of the client's chain
            next_hops[served.client] = HelperClient(
                served.next_address,
                client=served.client,
                token=served.next_token,
                deadline=config.call_deadline,
                tls_root_cert=root_cert,
                tls_server_name=server_name,
            )
            next_hops[served.client].codecs = dict(own_codecs)
        server = HelperServer(
            worker,
            verifier,
            **_server_options(config, round_, cert_key),
            next_hops=next_hops,
            links=next_hop_links(chained),
            # a client's micro-batches are in flight at once (a planned chain's count each)
            in_flight=max(
                [c.micro_batches or config.chain.micro_batches for c in round_.clients],
                default=config.chain.micro_batches,
            ) + 1,
        ).start()
    except Exception:
        # nothing serves the worker's thread or the dialled hops if the server never starts
        worker.stop()
        for hop in next_hops.values():
            hop.close()
        raise
    return _serve_round(
        msg, round_, clients, worker, server, relaying=len(next_hops), weights=weights
    )


def next_hop_links(served: Iterable[ServedClient]) -> dict[str, Emulation]:
    """Per client whose chain goes on after this helper: the emulated link to its next
    hop, as the server sent it (none where it sent rate and latency 0)."""
    links = {}
    for entry in served:
        link = Emulation(rate_mbps=entry.next_link_mbps, latency_ms=entry.next_link_latency_ms)
        if entry.next_address and link.active:
            links[entry.client] = link
    return links


def _build_bodies(
    task: SplitTask,
    config: RunConfig,
    example: torch.Tensor,
    served: Sequence[ServedClient],
    load: Callable[[torch.nn.Module], None],
) -> tuple[dict[str, torch.nn.Module], dict[str, ActivationSpec]]:
    """Each client's body piece, given to ``load`` once built (the round's weights), and
    the spec of its input.

    In ``shared`` memory mode the clients of the same cuts and piece get the same module.
    """
    bodies, specs, spec_of_part, body_of_part = {}, {}, {}, {}
    for entry in served:
        client, cuts, piece = entry.client, entry.cuts, entry.piece
        part = (cuts, piece)
        if config.helper_memory == "shared" and part in body_of_part:
            # one body per piece, trained by all its clients (HelperWorker docs)
            bodies[client], specs[client] = body_of_part[part], spec_of_part[part]
            continue
        split = task.split({**config.as_dict(), "cuts": cuts})
        if not 1 <= piece < len(split.parts) - 1:
            raise ValueError(
                f"client-piece {piece} is not a body piece of cuts {cuts!r} "
                f"(1 .. {len(split.parts) - 2})"
            )
        bodies[client] = body_of_part[part] = split.parts[piece]
        load(bodies[client])
        if part not in spec_of_part:
            spec_of_part[part] = _input_spec(split, example, piece)
        specs[client] = spec_of_part[part]
    return bodies, specs


def _serve_round(
    msg: Message,
    round_: HelperRound,
    clients: list[str],
    worker: HelperWorker | SyncWorker,
    server: HelperServer,
    sync: SyncWorker | None = None,
    relaying: int = 0,
    weights: PartState | None = None,
) -> Message:
    """Serve the round's clients, then reply with their bodies and the helper's metrics
    (with ``sync``, also its synchronous steps); ``relaying`` clients' chains go on to a
    next hop. The bodies go back without their frozen tensors (``weights.frozen``)."""
    frozen = weights.frozen if weights is not None else set()
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
        all_done = server.wait_clients(round_.round_timeout)
    finally:
        server.stop()
    for client, reason in sorted(server.aborted.items()):
        log(WARNING, "helper: client %s aborted: %s", client, reason)
    for client, reason in sorted(server.dropped.items()):
        log(WARNING, "helper: client %s dropped: %s", client, reason)
    if not all_done:
        gone = set(server.finished) | set(server.dropped) | set(server.aborted)
        missing = sorted(set(clients) - gone)
        log(WARNING, "helper: clients %s did not finish before the round deadline", missing)
    bodies: dict[str, ArrayRecord] = {}
    records: dict[int, ArrayRecord] = {}  # shared mode: one record per shared body
    for client in server.finished:
        state = worker.bodies.get(client)
        if state is not None:
            if id(state.module) not in records:
                records[id(state.module)] = ArrayRecord(
                    {
                        k: v.detach().cpu()
                        for k, v in without(state.module.state_dict(), frozen).items()
                    }
                )
            bodies[client] = records[id(state.module)]
    tasks = worker.executed
    result = HelperResult(
        finished=list(server.finished),
        dropped=list(server.dropped),
        drop_reasons=dict(server.dropped),
        busy_seconds=sum(t.end - t.start for t in tasks),
        wall_seconds=time.perf_counter() - start,
        refused=server.refused_count,
        invalid_requests=server.invalid_count,
        peak_rss_mib=peak_rss_mib(),
        body_fwd_ms=_mean_ms(t for t in tasks if t.kind == FORWARD),
        body_bwd_ms=_mean_ms(t for t in tasks if t.kind == BACKWARD),
        timeline=[TaskSpan(t.client, t.kind, t.start, t.end) for t in tasks],
        step_examples=list(sync.step_examples) if sync is not None else None,
        step_clients=list(sync.step_clients) if sync is not None else None,
        aborted=dict(server.aborted),
    )
    content = result.to_content(bodies)
    with_base_hash(content, weights.held if weights is not None else "")
    return Message(content, reply_to=msg)


def _serve_sync(
    msg: Message,
    context: Context,
    config: RunConfig,
    round_: HelperRound,
    task: SplitTask,
    cert_key: tuple[bytes, bytes] | None,
) -> Message:
    """A helper's round of synchronous steps: one shared body behind a step barrier."""
    clients = [c.client for c in round_.clients]
    client_cuts = sorted({c.cuts for c in round_.clients})
    if len(client_cuts) > 1:
        raise ValueError(
            f"synchronous steps run one shared body, but the clients have different cuts "
            f"{client_cuts}; give every client the same cuts"
        )
    counts = round_.schedule
    if counts is None or counts.shape[1] != len(clients):
        raise ValueError(
            f"schedule of shape {None if counts is None else counts.shape} does not have "
            f"one column per client ({len(clients)})"
        )
    values = config.as_dict()
    split = task.split({**values, "cuts": client_cuts[0]} if client_cuts else values)
    weights = part_state(context, (split.body,), msg.content[ARRAYS], round_.base_hash)
    load_part(split.body, weights.state, assign=weights.frozen)
    grad_size = sum(  # the clients' trainable head and tail parameters (train_sync)
        p.numel() for part in (split.head, split.tail) for p in part.parameters()
        if p.requires_grad
    )
    worker = SyncWorker(
        split.body,
        clients,
        counts,
        lambda params: task.optimizer_fn(params, values),
        input_spec=_input_spec(split, task.example_input(values)),
        client_parts=round_.client_parts,
        grad_size=grad_size,
        emulation=node_emulation(context, config, ROLE_HELPER, round_.server_round),
    )
    verifier = _round_verifier(round_, context)
    try:
        server = SyncHelperServer(
            worker,
            verifier,
            **_server_options(config, round_, cert_key),
        ).start()
    except Exception:
        worker.stop()
        raise
    return _serve_round(msg, round_, clients, worker, server, sync=worker, weights=weights)


def _round_verifier(round_: HelperRound, context: Context) -> TokenVerifier:
    """The helper's check of this round's client tokens."""
    return TokenVerifier(
        round_.token_key,
        run_id=context.run_id,
        server_round=round_.server_round,
        helper=context.node_id,
        clients=[c.client for c in round_.clients],
    )


def _server_options(
    config: RunConfig, round_: HelperRound, cert_key: tuple[bytes, bytes] | None
) -> dict[str, Any]:
    """Data-plane server settings (address, deadlines, TLS)."""
    return {
        "address": round_.listen_address,
        "task_timeout": config.call_deadline,
        "tls_cert": cert_key[0] if cert_key else None,
        "tls_key": cert_key[1] if cert_key else None,
        "idle_timeout": config.client_idle_timeout or None,
    }


def _input_spec(split: Any, example: Any, piece: int = 1) -> ActivationSpec:
    """Shape (without batch) and dtype of the input of part ``piece`` (the body, or a
    chain's piece; one per tensor when several cross its cut), from the parts before it
    on an example."""
    out = example
    with torch.no_grad():
        for i, part in enumerate(split.parts[:piece]):
            part.eval()
            out = part(out) if i == 0 else call_part(part, out)
    return spec_of(out)


def _mean_ms(tasks: Iterable[TaskRecord]) -> float:
    durations = [t.end - t.start for t in tasks]
    return 1000.0 * sum(durations) / len(durations) if durations else 0.0
