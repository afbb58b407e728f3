"""The round's training messages: ``train.helper`` to helpers, ``train.split`` to clients.

- ``train.split``: head and tail weights, the client's cuts, its first helper's address,
  its round token for that helper, the wrapped strategy's config (and, under global
  sampling, its schedule column);
- ``train.helper``: the weights of every body piece the helper runs, and per client it
  serves the client's cuts, the piece, the next hop's address and the client's token
  there; the key to check tokens with, the task order, the listen address and the round
  deadline (and the schedule columns of its clients).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from strategies.assembly import subset
from strategies.assignment import RoundAssignment, RoundTokens
from strategies.discovery import NodeInfo
from strategies.sync_schedule import SyncSchedule

CLIENT_TRAIN = "train.split"
HELPER_TRAIN = "train.helper"


def plain(config: ConfigRecord) -> dict[str, Any]:
    """The entries of ``config`` as a dict, to extend into another record."""
    return dict(config.items())


def helper_messages(
    arrays: ArrayRecord,
    config: ConfigRecord,
    *,
    server_round: int,
    cuts: str,
    helpers: Sequence[int],
    assignment: RoundAssignment,
    tokens: RoundTokens,
    nodes: Mapping[int, NodeInfo],
    piece_keys: Callable[[str], Sequence[Sequence[str]]],
    helper_order: Callable[[int, list[int]], list[str]],
    round_timeout: float,
    schedule: SyncSchedule | None,
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
    cuts : str
        The default cuts.
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
    """
    chain_of, cuts_of = assignment.chain_of, assignment.cuts_of
    messages = []
    for helper in helpers:
        # (client, position in its chain) of every piece this helper runs
        served = [(c, chain.index(helper)) for c, chain in chain_of.items() if helper in chain]
        if not served:
            continue
        clients = [c for c, _ in served]
        body_keys = sorted({k for c, j in served for k in piece_keys(cuts_of[c])[j]})
        nexts = [chain_of[c][j + 1] if j + 1 < len(chain_of[c]) else None for c, j in served]
        helper_config = ConfigRecord(
            {
                **plain(config),
                "server-round": server_round,
                "cuts": cuts,
                "clients": [str(c) for c in clients],
                "client-cuts": [cuts_of[c] for c in clients],
                "client-piece": [j + 1 for _, j in served],
                "client-next": [nodes[n].address if n is not None else "" for n in nexts],
                "client-next-token": [
                    tokens.hops[(c, n)] if n is not None else ""
                    for c, n in zip(clients, nexts, strict=True)
                ],
                "token-key": tokens.keys[helper],
                "order": helper_order(helper, clients),
                "listen-address": nodes[helper].listen_address,
                "round-timeout": float(round_timeout),
            }
        )
        if schedule is not None:
            helper_config.update(schedule.helper_fields(clients))
        messages.append(
            Message(
                RecordDict({"arrays": subset(arrays, body_keys), "config": helper_config}),
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
    cuts: str,
    helper_address: str,
    token: str,
    extra: Mapping[str, Any],
    schedule: SyncSchedule | None,
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
        ``state_dict`` keys of the client's head and tail.
    cuts : str
        The client's cuts.
    helper_address : str
        Data-plane address of its first helper.
    token : str
        Its round token for that helper.
    extra : Mapping
        Further settings (:meth:`SplitStrategy.client_config`).
    schedule : SyncSchedule, optional
        The round's synchronous-step schedule under global sampling.
    """
    client = inner.metadata.dst_node_id
    inner_config = inner.content.config_records.get(config_key, ConfigRecord())
    client_config = ConfigRecord(
        {
            **plain(inner_config),
            "cuts": cuts,
            "helper-address": helper_address,
            "round-token": token,
            **extra,
        }
    )
    if schedule is not None:
        client_config.update(schedule.client_fields(client))
    return Message(
        RecordDict({"arrays": subset(arrays, head_tail_keys), "config": client_config}),
        dst_node_id=client,
        message_type=CLIENT_TRAIN,
    )
