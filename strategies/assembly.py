"""One full model per client, from its head and tail and the body pieces of its helpers.

A client replies with its head and tail; each helper of its chain replies with a body
record (:func:`flsplit.protocol.body_record`) of the piece it trained for that client.
The wrapped Flower strategy aggregates full models, so the pieces are put back together
here; a client whose body is incomplete (a helper did not finish for it) is left out of the
round, and the round's failures (:mod:`strategies.failures`) say why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message

from flsplit.protocol import (
    ARRAYS,
    METRICS,
    ROLE_HELPER,
    ClientResult,
    HelperResult,
    bodies_of,
    reply_content,
)
from strategies.failures import SentMessages


def subset(arrays: ArrayRecord, keys: Sequence[str]) -> ArrayRecord:
    """The entries ``keys`` of ``arrays``, in that order.

    Raises
    ------
    KeyError
        If ``arrays`` lacks some of them (cuts that do not match the model).
    """
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise KeyError(f"global model lacks {missing[:3]}: do the cuts match the model?")
    part = ArrayRecord()
    for key in keys:
        part[key] = arrays[key]
    return part


@dataclass
class RoundReplies:
    """A round's replies, sorted by the role of the node each one is about (the node its
    request went to: :class:`~strategies.failures.SentMessages`).

    Attributes
    ----------
    clients : list of Message
        Client replies (errors included: the wrapped strategy counts them).
    helpers : list of Message
        Helper replies without an error.
    bodies : dict
        Client -> the body pieces its helpers returned (one per helper of its chain).
    pieces_from : dict
        Client -> the helpers that returned a piece of its body.
    helper_results : dict
        Helper -> its :class:`~flsplit.protocol.HelperResult` (replies without an error).
    """

    clients: list[Message] = field(default_factory=list)
    helpers: list[Message] = field(default_factory=list)
    bodies: dict[int, list[ArrayRecord]] = field(default_factory=dict)
    pieces_from: dict[int, list[int]] = field(default_factory=dict)
    helper_results: dict[int, HelperResult] = field(default_factory=dict)


def sort_replies(replies: Iterable[Message], sent: SentMessages) -> RoundReplies:
    """Sort ``replies`` into client and helper replies and collect the helpers' pieces.

    A reply counts for the role of the message it answers, so the SuperLink's error reply
    for an unreachable helper is that helper's, not a client's. A helper reply with an
    error is dropped (the round's failures name it: :func:`~strategies.failures.round_failures`).
    """
    result = RoundReplies()
    for reply in replies:
        if sent.role_of(reply) != ROLE_HELPER:
            result.clients.append(reply)
            continue
        if reply.has_error():
            continue
        helper = sent.node_of(reply)
        result.helpers.append(reply)
        result.helper_results[helper] = HelperResult.from_content(reply.content)
        for client, record in bodies_of(reply.content).items():
            result.bodies.setdefault(client, []).append(record)
            result.pieces_from.setdefault(client, []).append(helper)
    return result


def incomplete_bodies(
    client_replies: Sequence[Message],
    bodies: Mapping[int, Sequence[ArrayRecord]],
    body_keys: Callable[[int], Sequence[str]],
) -> dict[int, str]:
    """Client -> why its body cannot be assembled, for the clients that replied without
    an error but whose helpers returned no body, or not every piece of it."""
    incomplete = {}
    for reply in client_replies:
        if reply.has_error():
            continue
        src = reply.metadata.src_node_id
        why = _incomplete(bodies.get(src, ()), body_keys(src))
        if why is not None:
            incomplete[src] = why
    return incomplete


def _incomplete(pieces: Sequence[ArrayRecord], body_keys: Sequence[str]) -> str | None:
    if not pieces:
        return "no body returned by its helper"
    missing = set(body_keys) - {key for piece in pieces for key in piece}
    if missing:
        return (
            f"a helper of its chain returned no piece ({len(missing)} body tensors "
            f"missing, e.g. {sorted(missing)[0]})"
        )
    return None


def full_model_replies(
    client_replies: Sequence[Message],
    bodies: Mapping[int, Sequence[ArrayRecord]],
    body_keys: Callable[[int], Sequence[str]],
    full_keys: Sequence[str],
) -> Iterator[Message]:
    """Turn each client's reply into one carrying its full model.

    Parameters
    ----------
    client_replies : sequence of Message
        The clients' replies; each one's content is replaced by ``arrays`` (the full
        model, in ``full_keys`` order) and its ``metrics`` without the stage times and
        spans the planner read (:meth:`ClientResult.app_metrics`).
    bodies : Mapping
        Client -> the pieces its helpers returned.
    body_keys : callable
        ``body_keys(client)``: the body's ``state_dict`` keys for that client's cuts.
    full_keys : sequence of str
        Every ``state_dict`` key of the model, in order.

    Yields
    ------
    Message
        Replies with an error unchanged, and the complete clients' replies; a client
        whose helpers returned no body, or not every piece of it, is left out (the
        round's failures say why: :func:`incomplete_bodies`).
    """
    for reply in client_replies:
        src = reply.metadata.src_node_id
        if reply.has_error():
            yield reply
            continue
        wanted = set(body_keys(src))
        if _incomplete(bodies.get(src, ()), list(wanted)) is not None:
            continue
        body: dict[str, Any] = {}
        for piece in bodies[src]:
            for key in piece:
                body[key] = piece[key]
        head_tail = reply.content.array_records[ARRAYS]
        full = ArrayRecord()
        for key in full_keys:
            full[key] = body[key] if key in wanted else head_tail[key]
        metrics = ClientResult.app_metrics(reply.content.metric_records[METRICS])
        reply.content = reply_content(full, metrics)
        yield reply
