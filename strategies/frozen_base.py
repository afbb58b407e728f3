"""The server's side of a frozen base: what each node holds, what travels, what is logged.

A model fine-tuned through adapters has a frozen base (parameters with
``requires_grad=False``, :mod:`flsplit.model.frozen`). The base never changes, so:

- a train message carries a frozen tensor only to a node that has not confirmed holding
  it: the node names the base hash it holds in every reply, and the server counts a node
  as holding the tensors it sent only once that reply arrived without an error. Any
  error, a missing reply or a new node id sends them again. This is more robust than
  remembering what was sent: a message lost on the way, a node that failed before caching
  them or a node that restarted under the same id (its ``Context.state`` gone) gets the
  base again; the worst case is one failed round for a node that restarted between two
  rounds (it names what it lacks), never a node training on a base it does not have;
- the wrapped Flower strategy sees only the trainable tensors (and buffers), in
  ``configure_train`` and in the replies it aggregates; the global model it hands back
  is completed with the server's base, so checkpoints and ``evaluate_fn`` see the whole
  model;
- a reply naming another base than the server's is refused (a failure of the round,
  logged with both hashes);
- every round logs the parameter bytes its train messages carried (the base's among
  them) and its replies returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import ERROR, INFO, WARNING

from flwr.app import ArrayRecord, Message
from flwr.supercore import log

from flsplit.model.frozen import base_hash, trainable_keys
from flsplit.protocol import NodeReport, base_hash_of
from strategies.assembly import subset
from strategies.failures import Failure, SentMessages

__all__ = ["FrozenBase", "array_bytes"]


def array_bytes(message: Message, only: Iterable[str] | None = None) -> int:
    """Bytes of the parameter tensors ``message`` carries (every ``ArrayRecord``; only
    the ``only`` keys when given), as serialised for the wire."""
    keys = set(only) if only is not None else None
    total = 0
    for record in message.content.array_records.values():
        for key, array in record.items():
            if keys is None or key in keys:
                total += len(array.data)
    return total


class FrozenBase:
    """The frozen base of the server's model and which node holds which of its tensors.

    Parameters
    ----------
    frozen_keys : sequence of str
        ``state_dict`` keys of the frozen parameters (empty: no frozen base, everything
        travels every round as before).
    full_keys : sequence of str
        Every ``state_dict`` key of the model, in order.

    Attributes
    ----------
    hash : str
        The base's hash (:func:`flsplit.model.frozen.base_hash`), once a round started.
    held : dict
        Node -> the frozen keys it confirmed holding.
    """

    def __init__(self, frozen_keys: Sequence[str], full_keys: Sequence[str]) -> None:
        frozen = set(frozen_keys)
        self.full_keys = list(full_keys)
        self.keys = [k for k in self.full_keys if k in frozen]
        self.trainable_keys = trainable_keys(self.full_keys, frozen)
        self.hash = ""
        self.held: dict[int, set[str]] = {}
        self._base: ArrayRecord | None = None
        self._pending: dict[int, set[str]] = {}
        self._sent = self._sent_base = self._received = 0

    def take(self, arrays: ArrayRecord) -> None:
        """Start a round from the global model ``arrays``: keep its base (hashed when its
        tensors are not the ones kept already)."""
        self._pending, self._sent, self._sent_base, self._received = {}, 0, 0, 0
        if not self.keys:
            return
        base = subset(arrays, self.keys)
        kept = self._base
        if kept is not None and all(base[k] is kept[k] for k in self.keys):
            return  # the arrays this class completed: the same base, no need to hash
        digest = base_hash(base, self.keys)
        if self.hash and digest != self.hash:
            log(WARNING, "the global model's frozen base changed (%s -> %s): every node "
                "gets it again", self.hash, digest)
            self.held.clear()
        self.hash, self._base = digest, base

    def refusal(self, report: NodeReport) -> str:
        """Why a node meeting the server is refused: it holds another base (``""``: it
        is not refused)."""
        if self.keys and self.hash and report.base_hash and report.base_hash != self.hash:
            return (f"it holds frozen base {report.base_hash} but the server's is "
                    f"{self.hash} (give every node the server's base)")
        return ""

    def trainable(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` without the frozen base (what the wrapped strategy sees)."""
        if not self.keys:
            return arrays
        return subset(arrays, [k for k in arrays if k not in set(self.keys)])

    def trainable_of(self, keys: Sequence[str]) -> list[str]:
        """``keys`` without the frozen ones (what a node sends back)."""
        return trainable_keys(keys, self.keys) if self.keys else list(keys)

    def to_send(self, node: int, keys: Sequence[str]) -> list[str]:
        """The ``keys`` of a part that go to ``node`` this round: all but the frozen ones
        it holds. The frozen ones sent are held once its reply confirms them."""
        if not self.keys:
            return list(keys)
        held = self.held.get(node, set())
        frozen = set(self.keys)
        send = [k for k in keys if k not in held]
        self._pending.setdefault(node, set()).update(k for k in send if k in frozen)
        return send

    def sending(self, messages: Sequence[Message]) -> None:
        """Count the parameter bytes of the round's train messages."""
        self._sent = sum(array_bytes(m) for m in messages)
        self._sent_base = sum(array_bytes(m, self.keys) for m in messages) if self.keys else 0

    def received(
        self, server_round: int, replies: Sequence[Message], sent: SentMessages
    ) -> tuple[list[Message], dict[int, Failure]]:
        """Count the replies' parameter bytes, refuse those naming another base, and
        update which node holds which frozen tensors.

        Returns
        -------
        list of Message
            The replies not refused.
        dict
            Node -> its :class:`~strategies.failures.Failure` for the refused ones.
        """
        kept, refused, answered = [], {}, set()
        for reply in replies:
            node = sent.node_of(reply)
            answered.add(node)
            if reply.has_error():
                self.held.pop(node, None)  # it may not have kept what it got: send again
                kept.append(reply)
                continue
            self._received += array_bytes(reply)
            named = base_hash_of(reply.content)
            if self.keys and named and named != self.hash:
                cause = (f"holds frozen base {named} but the server's is {self.hash}: "
                         "refused (give every node the server's base)")
                log(ERROR, "round %d: node %d %s", server_round, node, cause)
                refused[node] = Failure(node, sent.role_of(reply), cause)
                self.held.pop(node, None)
                continue
            if named and named == self.hash:
                self.held.setdefault(node, set()).update(self._pending.get(node, ()))
            kept.append(reply)
        for node in set(self._pending) - answered:
            self.held.pop(node, None)
        return kept, refused

    def whole(self, arrays: ArrayRecord) -> ArrayRecord:
        """The aggregated trainable ``arrays`` completed with the base, in model order."""
        if not self.keys or self._base is None:
            return arrays
        whole = ArrayRecord()
        for key in self.full_keys:
            if key in arrays:
                whole[key] = arrays[key]
            elif key in self._base:
                whole[key] = self._base[key]
        for key in arrays:  # whatever else the wrapped strategy returned stays
            if key not in whole:
                whole[key] = arrays[key]
        return whole

    def traffic(self, server_round: int) -> dict[str, int]:
        """The round's parameter bytes (``sent``, of which ``sent-base``, and
        ``received``), logged in one line."""
        figures = {"sent": self._sent, "sent-base": self._sent_base, "received": self._received}
        log(INFO, "round %d: parameter bytes sent %d (frozen base %d), received %d",
            server_round, self._sent, self._sent_base, self._received)
        return figures
