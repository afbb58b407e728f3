"""One full model per client, from its head and tail and the body pieces of its helpers.

A client replies with its head and tail; each helper of its chain replies with a body
record (:func:`flsplit.protocol.body_record`) of the piece it trained for that client.
The wrapped Flower strategy aggregates full models, so the pieces are put back together
here; a client whose body is incomplete (a helper did not finish for it) is left out of the round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.supercore import log

from flsplit.protocol import ARRAYS, METRICS, ClientResult, bodies_of, reply_content


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
    """A round's replies, sorted by who sent them.

    Attributes
    ----------
    clients : list of Message
        Client replies (errors included: the wrapped strategy counts them).
    helpers : list of Message
        Helper replies without an error.
    bodies : dict
        Client -> the body pieces its helpers returned (one per helper of its chain).
    """

    clients: list[Message] = field(default_factory=list)
    helpers: list[Message] = field(default_factory=list)
    bodies: dict[int, list[ArrayRecord]] = field(default_factory=dict)


def sort_replies(
    replies: Iterable[Message], is_helper: Callable[[Message], bool]
) -> RoundReplies:
    """Sort ``replies`` into client and helper replies and collect the helpers' pieces.

    A helper reply with an error is logged and dropped.
    """
    result = RoundReplies()
    for reply in replies:
        if not is_helper(reply):
            result.clients.append(reply)
            continue
        if reply.has_error():
            log(WARNING, "helper %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        result.helpers.append(reply)
        for client, record in bodies_of(reply.content).items():
            result.bodies.setdefault(client, []).append(record)
    return result


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
        whose helpers returned no body, or not every piece of it, is logged and left out.
    """
    for reply in client_replies:
        src = reply.metadata.src_node_id
        if reply.has_error():
            yield reply
            continue
        wanted = set(body_keys(src))
        if not bodies.get(src):
            log(WARNING, "client %d: its helper returned no body; update dropped", src)
            continue
        body: dict[str, Any] = {}
        for piece in bodies[src]:
            for key in piece:
                body[key] = piece[key]
        missing = wanted - set(body)
        if missing:
            log(
                WARNING,
                "client %d: a helper of its chain returned no piece (%d body tensors "
                "missing, e.g. %s); update dropped",
                src,
                len(missing),
                sorted(missing)[0],
            )
            continue
        head_tail = reply.content.array_records[ARRAYS]
        full = ArrayRecord()
        for key in full_keys:
            full[key] = body[key] if key in wanted else head_tail[key]
        metrics = ClientResult.app_metrics(reply.content.metric_records[METRICS])
        reply.content = reply_content(full, metrics)
        yield reply
