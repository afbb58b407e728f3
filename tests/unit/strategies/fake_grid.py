"""A Grid without a SuperLink: answers the strategy's messages the way flsplit's nodes do.

Discovery (``query.split``) gets the node's role, example count and (helpers) addresses,
as :func:`flsplit.client.app` replies. A client's ``train.split`` gets its head and tail
back with every tensor set to the client's fill value (so a test can tell whose tensors
ended up where) and its metrics; a helper's ``train.helper`` gets, per client it serves, a
``body.<client>`` record of the piece it ran for that client, filled with that client's
value, plus the helper metrics and timeline records the real handler sends. A client's
Flower ``evaluate`` gets its evaluation metrics (loss = its fill value). A node given an
``error`` replies to everything with that error, as Flower does when a ClientApp raises;
an ``unreachable`` node gets the SuperLink's reply for a node that stopped sending
heartbeats (``Error: Node Unavailable``, sent by node 1, not by the node); a ``lost``
node's messages get no reply at all (the ServerApp stops waiting for them). Every pushed
message gets an id, as the real grids give it, that its reply names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from flsplit.protocol import (
    ARRAYS,
    BACKWARD,
    CLIENT_TRAIN,
    CONFIG,
    EVAL_ACC,
    EVAL_LOSS,
    FORWARD,
    HELPER_TRAIN,
    METRICS,
    NUM_EXAMPLES,
    QUERY,
    ROLE_HELPER,
    ClientResult,
    HelperResult,
    HelperRound,
    NodeReport,
    TaskSpan,
    reply_content,
)


@dataclass
class FakeNode:
    """What one fake node reports and trains."""

    role: str
    examples: int = 0
    fill: float = 0.0  # value of every tensor this client's training returns
    error: str = ""  # the exception text its ClientApp raises on every message
    load_ms: float = 0.0  # the time per batch its data loader takes, as it reports
    unreachable: bool = False  # the SuperLink replies for it: Node Unavailable
    lost: bool = False  # its messages get no reply
    compute_factor: float = 1.0  # as it reports at discovery
    sample_ms: float = 0.0  # a client's own time per sample it reports (0: 1 ms stages)
    body_sample_ms: float = 0.0  # a helper's body time per sample in synchronous steps
    participant_ms: float = 0.0  # a helper's time per client in a step (its step timeline)
    codecs: tuple[str | None, str | None] = (None, None)  # as it reports at discovery
    helper_links: list[int] | None = None  # a helper: the helpers it declares links with
    #: a helper's forward and backward tasks per client it serves, their ms in order
    #: (its timeline and its reported means, as a helper reports them)
    task_ms: tuple[float, ...] = ()
    steady_batch_ms: float = 0.0  # a client's time per batch after its first, as it reports

    @property
    def is_helper(self) -> bool:
        return self.role == ROLE_HELPER


@dataclass
class FakeGrid(Grid):
    """In-process :class:`Grid` whose nodes answer at once.

    Parameters
    ----------
    nodes : dict
        Node id -> :class:`FakeNode`.
    piece_keys : callable
        ``piece_keys(cuts)``: the body pieces' ``state_dict`` keys, so a helper returns
        the piece it was told to run.
    run_id : int
        The run's id (round tokens are bound to it).
    silent : set of (helper, client)
        Hops whose helper returns no body for that client (it did not finish).
    idle : set of (helper, client)
        Hops whose helper drops that client as idle (no body, reported as dropped).
    aborted : dict of (helper, client) to str
        Hops whose client aborted its round on that helper, with the reason it sent.
    """

    nodes: dict[int, FakeNode]
    piece_keys: Callable[[str], Sequence[Sequence[str]]]
    run_id: int = 7
    silent: set[tuple[int, int]] = field(default_factory=set)
    idle: set[tuple[int, int]] = field(default_factory=set)
    aborted: dict[tuple[int, int], str] = field(default_factory=dict)
    sent: list[Message] = field(default_factory=list)
    _replies: dict[str, Message] = field(default_factory=dict)

    @property
    def run(self) -> Run:
        return Run.create_empty(self.run_id)

    def set_run(self, run: Run) -> None:
        self.run_id = run.run_id

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            self.sent.append(message)
            message_id = str(len(self.sent))
            message.metadata.__dict__["_message_id"] = message_id  # as the real grids do
            if not self.nodes[message.metadata.dst_node_id].lost:
                self._replies[message_id] = self.answer(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    # -- the nodes' handlers ----------------------------------------------------------

    def answer(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        node = self.nodes[node_id]
        kind = message.metadata.message_type
        if node.unreachable:
            # what the SuperLink stores for a message to a node without heartbeats
            return create_message_error_unavailable_res_message(
                message.metadata, "node_unavail"
            )
        if node.error:
            # Flower's reply when a ClientApp raises (flwr.supernode.runtime.run_clientapp)
            reason = f"<class 'ValueError'>:<'{node.error}'>"
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
            return Message(error, reply_to=message)
        if kind == QUERY:
            report = NodeReport(
                role=node.role, index=node_id, examples=node.examples,
                compute_factor=node.compute_factor, activations_codec=node.codecs[0],
                gradients_codec=node.codecs[1], helper_links=node.helper_links,
            )
            if node.is_helper:
                report.address = f"helper-{node_id}:9000"
                report.listen_address = "0.0.0.0:9000"
            content = report.to_content()
        elif kind == HELPER_TRAIN:
            content = self._serve(node_id, message)
        elif kind == CLIENT_TRAIN:
            content = self._train(node, message)
        elif kind == MessageType.EVALUATE and not node.is_helper:
            metrics = {EVAL_LOSS: node.fill, EVAL_ACC: 0.5, NUM_EXAMPLES: node.examples}
            content = RecordDict({METRICS: MetricRecord(metrics)})
        else:
            raise AssertionError(f"unexpected message type {kind!r}")
        return Message(content, reply_to=message)

    def _train(self, node: FakeNode, message: Message) -> RecordDict:
        arrays = ArrayRecord(_filled(message.content[ARRAYS], node.fill))
        # with sample_ms: one batch of all its examples whose stages add up to that
        stage = node.sample_ms * node.examples / 3 if node.sample_ms else 1.0
        result = ClientResult(
            examples=node.examples,
            loss=node.fill,
            accuracy=0.5,
            batches=1 if node.sample_ms else 0,
            stage1_ms=stage,
            stage3_ms=stage,
            stage5_ms=stage,
            started=0.0,
            ended=1.0,
            load_ms=node.load_ms,
            steady_batch_ms=node.steady_batch_ms,
            bytes_up=int(100 * node.fill),  # data-plane bytes it reports: its fill
            bytes_down=int(200 * node.fill),
        )
        return reply_content(arrays, result.to_metrics())

    def _serve(self, helper: int, message: Message) -> RecordDict:
        round_ = HelperRound.from_config(message.content[CONFIG])
        state = message.content[ARRAYS].to_torch_state_dict()
        bodies, dropped, aborted = {}, {}, {}
        for served in round_.clients:
            hop = (helper, int(served.client))
            if hop in self.idle:
                dropped[served.client] = "no request for 120 s"
                continue
            if hop in self.aborted:
                aborted[served.client] = self.aborted[hop]
            if hop in self.silent or hop in self.aborted:
                continue
            keys = self.piece_keys(served.cuts)[served.piece - 1]
            fill = self.nodes[int(served.client)].fill
            bodies[served.client] = ArrayRecord(_filled({k: state[k] for k in keys}, fill))
        served_samples = 1000 * len(round_.clients)  # synchronous steps: a nominal count
        busy = self.nodes[helper].body_sample_ms * served_samples / 1000.0
        timeline = []
        if node_ms := self.nodes[helper].participant_ms:  # steps one after the other
            end = 0.0
            for step, row in enumerate(round_.schedule if round_.schedule is not None else []):
                if (row > 0).any():
                    end += node_ms * int((row > 0).sum()) / 1000.0
                    timeline.append(TaskSpan(f"step{step}", "bwd", end, end))
        task_ms = self.nodes[helper].task_ms
        clock = 0.0
        for served in round_.clients if task_ms else []:
            for ms in task_ms:
                for kind in (FORWARD, BACKWARD):
                    timeline.append(TaskSpan(served.client, kind, clock, clock + ms / 1000))
                    clock += ms / 1000 + 0.5  # the helper waits between tasks
        mean = sum(task_ms) / len(task_ms) if task_ms else 0.0
        result = HelperResult(
            timeline=timeline,
            body_fwd_ms=mean,
            body_bwd_ms=mean,
            busy_seconds=busy,
            step_examples=[served_samples] if busy else None,
            finished=list(bodies),
            dropped=list(dropped),
            peak_rss_mib=100.0 + helper,
            drop_reasons=dropped,
            aborted=aborted,
        )
        return result.to_content(bodies)


def _filled(arrays: ArrayRecord | dict[str, torch.Tensor], value: float) -> dict:
    state = arrays.to_torch_state_dict() if isinstance(arrays, ArrayRecord) else arrays
    return {k: torch.full_like(t, value) for k, t in state.items()}
