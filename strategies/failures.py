"""Who failed in a round, and why: one :class:`Failure` per client or helper.

A reply names its sender in ``metadata.src_node_id``, but a failed node is often not the
sender of its error reply: the SuperLink answers for a node it cannot reach
(``Error: Node Unavailable``, ``src_node_id`` 1), and the ServerApp's grid for a reply it
could not download. The node that failed is the one the request went to, so replies are
mapped back to the messages the round sent (:class:`SentMessages`: a reply's
``reply_to_message_id`` is the id the grid gave the request when it pushed it).

A round's failures (:func:`round_failures`), whichever path failed:

- an error reply, from a client or a helper (its reason text, and who replied if not the
  node itself);
- no reply at all before the ServerApp stopped waiting;
- a client that replied but whose body is incomplete: a helper of its chain failed, dropped
  it (with the helper's reason, e.g. ``no request for 120 s``), released it as aborted
  (with the reason the client sent, or its connection closing) or returned no body for it.

They are logged one line per node before the round's outcome
(:func:`log_failures`) and kept per round by the strategy (``round-N.json`` of the
planned strategy lists them under ``failures``: :meth:`Failure.to_dict`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore import log

from flsplit.protocol import HELPER_TRAIN, ROLE_CLIENT, ROLE_HELPER, HelperResult

#: The cause of a request that got no reply at all.
NO_REPLY = "no reply before the ServerApp stopped waiting (start()'s timeout)"


@dataclass(frozen=True)
class Failure:
    """One node that failed in a round.

    Attributes
    ----------
    node : int
        The node's id (the node the request went to, whoever replied).
    role : str
        ``client`` or ``helper``.
    cause : str
        Why, in one line.
    """

    node: int
    role: str
    cause: str

    def to_dict(self) -> dict[str, Any]:
        """The record of ``round-N.json``'s ``failures`` list."""
        return {"node": self.node, "role": self.role, "cause": self.cause}

    def __str__(self) -> str:
        return f"{self.role} {self.node} failed: {self.cause}"


#: Flower's reason when a ClientApp raises: ``<class 'ValueError'>:<'the text'>``
_RAISED = re.compile(r"<class '(?P<kind>[^']+)'>:<'(?P<text>.*)'>", re.DOTALL)
#: The simulation engine wraps the ClientApp's exception (and its traceback) in Ray's and
#: its own; the ClientApp's text comes last, after this
_SIMULATED = "ClientAppException occurred. Message: "


def error_text(reply: Message) -> str:
    """The error a node replied with, on one line: the exception's type and text when a
    ClientApp raised (``ValueError: the text``; in simulation its text only), else
    Flower's reason, and the error code."""
    reason = str(reply.error.reason)
    raised = _RAISED.fullmatch(reason.strip())
    if raised is not None:
        kind, text = raised["kind"], raised["text"]
        if _SIMULATED in text:
            reason = text.rsplit(_SIMULATED, 1)[1]
        else:
            reason = f"{kind.rsplit('.', 1)[-1]}: {text}"
    return f"{' '.join(reason.split())} (error code {reply.error.code})"


class SentMessages:
    """The messages a round sent, to tell which node and role each reply is about.

    The grid gives every message its id when it pushes it (after ``configure_train``
    returned them), so the ids are read at the first look-up, not here.

    Parameters
    ----------
    messages : iterable of Message
        The messages as handed to the grid (the same objects).
    helpers : collection of int
        The known helpers: a reply whose request is unknown is a helper's if it has the
        helper message type or comes from one of them.
    """

    def __init__(self, messages: Iterable[Message], helpers: Collection[int] = ()) -> None:
        self.messages = list(messages)
        self.helpers = frozenset(helpers)
        self._by_id: dict[str, Message] = {}

    def request_of(self, reply: Message) -> Message | None:
        """The message ``reply`` answers, if it was sent in this round."""
        if len(self._by_id) < len(self.messages):
            self._by_id = {m.metadata.message_id: m for m in self.messages if m.metadata.message_id}
        return self._by_id.get(reply.metadata.reply_to_message_id)

    def node_of(self, reply: Message) -> int:
        """The node ``reply`` is about: the one its request went to (the sender when the
        request is unknown)."""
        request = self.request_of(reply)
        return request.metadata.dst_node_id if request is not None else reply.metadata.src_node_id

    def role_of(self, reply: Message) -> str:
        """``helper`` if ``reply`` answers a ``train.helper`` message, else ``client``."""
        request = self.request_of(reply)
        if request is not None:
            return _role(request)
        helper = (
            reply.metadata.message_type == HELPER_TRAIN
            or reply.metadata.src_node_id in self.helpers
        )
        return ROLE_HELPER if helper else ROLE_CLIENT

    def unanswered(self, replies: Iterable[Message]) -> list[Message]:
        """The messages no reply in ``replies`` answers."""
        replies = list(replies)
        answered_ids = {r.metadata.reply_to_message_id for r in replies}
        answered_nodes = {self.node_of(r) for r in replies}
        return [
            m
            for m in self.messages
            if not (m.metadata.message_id and m.metadata.message_id in answered_ids)
            and m.metadata.dst_node_id not in answered_nodes
        ]

    def error_cause(self, reply: Message) -> str:
        """The cause of the error ``reply``: its text, and who replied when it is not the
        node itself."""
        text = error_text(reply)
        src, node = reply.metadata.src_node_id, self.node_of(reply)
        if src == node:
            return text
        if src == SUPERLINK_NODE_ID:
            return f"the SuperLink replied for it: {text}"
        return f"node {src} replied for it: {text}"


def _role(request: Message) -> str:
    return ROLE_HELPER if request.metadata.message_type == HELPER_TRAIN else ROLE_CLIENT


def round_failures(
    sent: SentMessages,
    replies: Iterable[Message],
    chain_of: Mapping[int, Sequence[int]] | None = None,
    helper_results: Mapping[int, HelperResult] | None = None,
    pieces_from: Mapping[int, Collection[int]] | None = None,
    incomplete: Mapping[int, str] | None = None,
) -> list[Failure]:
    """Every client and helper that failed in a round, helpers first.

    Parameters
    ----------
    sent : SentMessages
        The round's messages.
    replies : iterable of Message
        All of the round's replies.
    chain_of : Mapping, optional
        Client -> the helpers of its chain (split rounds).
    helper_results : Mapping, optional
        Helper -> its result, for the clients it dropped and why.
    pieces_from : Mapping, optional
        Client -> the helpers that returned a piece of its body.
    incomplete : Mapping, optional
        Client -> why its body could not be assembled, for the clients that replied
        without an error but are left out.

    Returns
    -------
    list of Failure
        One per failed node: its error reply, no reply, or (a client whose body is
        incomplete) what each helper of its chain that returned no piece did.
    """
    replies = list(replies)
    failed: dict[int, Failure] = {}
    for reply in replies:
        if reply.has_error():
            node = sent.node_of(reply)
            failed[node] = Failure(node, sent.role_of(reply), sent.error_cause(reply))
    for request in sent.unanswered(replies):
        node = request.metadata.dst_node_id
        failed[node] = Failure(node, _role(request), NO_REPLY)
    results = helper_results or {}
    pieces = pieces_from or {}
    for client, why in sorted((incomplete or {}).items()):
        if client in failed:
            continue
        causes = [
            _piece_cause(helper, client, failed, results)
            for helper in (chain_of or {}).get(client, ())
            if helper not in pieces.get(client, ())
        ]
        failed[client] = Failure(client, ROLE_CLIENT, "; ".join(causes) or why)
    return sorted(failed.values(), key=lambda f: (f.role != ROLE_HELPER, f.node))


def _piece_cause(
    helper: int, client: int, failed: Mapping[int, Failure], results: Mapping[int, HelperResult]
) -> str:
    """Why ``helper`` returned no piece of ``client``'s body."""
    if helper in failed:
        return f"no body: helper {helper} failed"
    result = results.get(helper)
    if result is not None and str(client) in result.dropped:
        why = result.drop_reasons.get(str(client))
        return f"dropped by helper {helper}: {why}" if why else f"dropped by helper {helper}"
    if result is not None and str(client) in result.aborted:
        return f"aborted on helper {helper}: {result.aborted[str(client)]}"
    return f"no body returned by helper {helper}"


def log_failures(server_round: int, failures: Sequence[Failure], stage: str = "") -> None:
    """One warning per failed node: ``round 3: helper 11 failed: <cause>``."""
    for failure in failures:
        log(WARNING, "round %d%s: %s", server_round, f" {stage}" if stage else "", failure)
