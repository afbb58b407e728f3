"""The round's training messages: ``train.helper`` to helpers, ``train.split`` to clients.

- ``train.split``: head and tail weights and a :class:`~flsplit.protocol.ClientRound`
  (the client's cuts, its first helper's address, its round token for that helper and,
  under global sampling, its schedule column) over the wrapped strategy's config;
- ``train.helper``: the weights of every body piece the helper runs and a
  :class:`~flsplit.protocol.HelperRound` (per client it serves the client's cuts, the
  piece, the next hop's address, the client's token there and the emulated link to it;
  the key to check tokens with, the task order, the listen address, the round deadline
  and the schedule columns of its clients) over the round's config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from flsplit.protocol import (
    ARRAYS,
    CLIENT_TRAIN,
    CONFIG,
    HELPER_TRAIN,
    ClientRound,
    HelperRound,
    HelperTask,
    ServedClient,
)
from strategies.assembly import subset
from strategies.assignment import RoundAssignment, RoundTokens
from strategies.discovery import NodeInfo
from strategies.frozen_base import FrozenBase
from strategies.sync_schedule import SyncSchedule


def plain(config: ConfigRecord) -> dict[str, Any]:
    """The entries of ``config`` as a dict, to extend into another record."""
    return dict(config.items())


def helper_messages(
    arrays: ArrayRecord,
    config: ConfigRecord,
    *,
    server_round: int,
    helpers: Sequence[int],
    assignment: RoundAssignment,
    tokens: RoundTokens,
    nodes: Mapping[int, NodeInfo],
    piece_keys: Callable[[str], Sequence[Sequence[str]]],
    helper_order: Callable[[int, list[int]], list[HelperTask]],
    round_timeout: float,
    schedule: SyncSchedule | None,
    base: FrozenBase | None = None,
    micro_batches: Mapping[int, int] | None = None,
    hop_link: Callable[[int, int], tuple[float, float] | None] | None = None,
) -> list[Message]:
    """One ``train.helper`` message per helper that serves somebody this round.

    Parameters
    ----------
    arrays : ArrayRecord
        The global model (each helper gets the pieces it runs).
    config : ConfigRecord
        The round's config, passed on to every helper.
    server_round : int
        The round, as the nodes see it.
    helpers : sequence of int
        The known helpers, in the order their messages go out.
    assignment : RoundAssignment
        Each client's chain and cuts.
    tokens : RoundTokens
        The helpers' keys and the per-hop tokens.
    nodes : Mapping
        Addresses from discovery.
    piece_keys : callable
        ``piece_keys(cuts)``: the body pieces' ``state_dict`` keys, in chain order.
    helper_order : callable
        ``helper_order(helper, clients)``: the helper's task order.
    round_timeout : float
        Seconds a helper waits for its clients.
    schedule : SyncSchedule, optional
        The round's synchronous-step schedule under global sampling.
    base : FrozenBase, optional
        The frozen base: a helper gets the frozen tensors of its pieces until it holds them.
    micro_batches : Mapping, optional
        Client -> micro-batches per batch of its planned chain (absent: the run config's).
    hop_link : callable, optional
        ``hop_link(helper, next_helper) -> (Mbit/s, latency ms)`` of the emulated link a
        relaying helper emulates to its next hop (rate 0: none); ``None``: free links.
    """
    micro_batches = micro_batches or {}
    chain_of, cuts_of = assignment.chain_of, assignment.cuts_of
    messages = []
    for helper in helpers:
        # (client, position in its chain) of every piece this helper runs
        served = [(c, chain.index(helper)) for c, chain in chain_of.items() if helper in chain]
        if not served:
            continue
        clients = [c for c, _ in served]
        body_keys = sorted({k for c, j in served for k in piece_keys(cuts_of[c])[j]})
        if base is not None:
            body_keys = base.to_send(helper, body_keys)
        entries = []
        for client, position in served:
            chain = chain_of[client]
            nxt = chain[position + 1] if position + 1 < len(chain) else None
            link = hop_link(helper, nxt) if hop_link is not None and nxt is not None else None
            rate, latency = link if link is not None else (0.0, 0.0)
            entries.append(
                ServedClient(
                    client=str(client),
                    cuts=cuts_of[client],
                    piece=position + 1,
                    next_address=nodes[nxt].address if nxt is not None else "",
                    next_token=tokens.hops[(client, nxt)] if nxt is not None else "",
                    micro_batches=int(micro_batches.get(client, 0)),
                    next_link_mbps=float(rate),
                    next_link_latency_ms=float(latency),
                )
            )
        round_ = HelperRound(
            server_round=server_round,
            clients=entries,
            token_key=tokens.keys[helper],
            listen_address=nodes[helper].listen_address,
            round_timeout=float(round_timeout),
            order=helper_order(helper, clients),
            schedule=schedule.columns(clients) if schedule is not None else None,
            client_parts=schedule.client_parts if schedule is not None else "shared",
            base_hash=base.hash if base is not None else "",
        )
        messages.append(
            Message(
                RecordDict(
                    {ARRAYS: subset(arrays, body_keys), CONFIG: round_.to_config(plain(config))}
                ),
                dst_node_id=helper,
                message_type=HELPER_TRAIN,
            )
        )
    return messages


def client_message(
    inner: Message,
    arrays: ArrayRecord,
    *,
    config_key: str,
    head_tail_keys: Sequence[str],
    server_round: int,
    cuts: str,
    helper_address: str,
    token: str,
    link: tuple[float, float] | None,
    schedule: SyncSchedule | None,
    base_hash: str = "",
    micro_batches: int = 0,
) -> Message:
    """The ``train.split`` message that replaces the wrapped strategy's ``inner`` one.

    Parameters
    ----------
    inner : Message
        The wrapped strategy's train message to this client (its config goes through).
    arrays : ArrayRecord
        The global model.
    config_key : str
        The wrapped strategy's config record key.
    head_tail_keys : sequence of str
        ``state_dict`` keys of the client's head and tail it gets (a frozen base's once).
    server_round : int
        The round, as the nodes see it.
    cuts : str
        The client's cuts.
    helper_address : str
        Data-plane address of its first helper.
    token : str
        Its round token for that helper.
    link : (float, float), optional
        The emulated link to its helper (:meth:`SplitStrategy.client_link`).
    schedule : SyncSchedule, optional
        The round's synchronous-step schedule under global sampling.
    base_hash : str
        The frozen base's hash (``""``: none).
    micro_batches : int
        Micro-batches per batch of its planned chain (0: the run config's).
    """
    client = inner.metadata.dst_node_id
    inner_config = inner.content.config_records.get(config_key, ConfigRecord())
    round_ = ClientRound(
        cuts=cuts,
        helper_address=helper_address,
        round_token=token,
        server_round=server_round,
        link_mbps=link[0] if link is not None else None,
        link_latency_ms=link[1] if link is not None else None,
        schedule=schedule.columns([client]) if schedule is not None else None,
        sample_offset=schedule.offset[client] if schedule is not None else 0,
        client_parts=schedule.client_parts if schedule is not None else "shared",
        base_hash=base_hash,
        micro_batches=micro_batches,
    )
    return Message(
        RecordDict(
            {
                ARRAYS: subset(arrays, head_tail_keys),
                CONFIG: round_.to_config(plain(inner_config)),
            }
        ),
        dst_node_id=client,
        message_type=CLIENT_TRAIN,
    )
