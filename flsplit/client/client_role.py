"""A client's handlers: its split training through a helper, and the plain full-model
``train`` and ``evaluate`` of :func:`~flsplit.client.app.make_client_app`.

In split training a client trains its head and tail and dials its helper (the message's
:class:`~flsplit.protocol.ClientRound`: address and round token) for the body. A round
that fails on the client (its data, its model, the app's training function) tells the
helper (``Abort``, with the cause), which releases the client at once. When the
round carries a schedule (global sampling, run config ``sampler``), it trains its
scheduled samples per global step (:mod:`flsplit.runtime.sync_client`) instead of its
local epochs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from flsplit.client.base_cache import part_state, without
from flsplit.client.node import (
    client_tls,
    compute_device,
    data_partition,
    node_codecs,
    node_emulation,
)
from flsplit.client.records import config_of, load_part, reply, state_dict_of
from flsplit.config import RunConfig
from flsplit.model.client_view import ClientModel
from flsplit.model.crossing import to_device
from flsplit.protocol import (
    ARRAYS,
    METRICS,
    ROLE_CLIENT,
    TRAIN_LOSS,
    ClientResult,
    ClientRound,
    eval_metrics,
    train_metrics,
    with_base_hash,
)
from flsplit.runtime.helper_client import HelperClient
from flsplit.runtime.remote_body import RemoteBody
from flsplit.runtime.sync_client import train_sync
from flsplit.runtime.trainer import TrainResult, train_split
from flsplit.runtime.warmup import warm_up
from flsplit.task import SplitTask, evaluate_model, train_full


def count_train_examples(context: Context, task: SplitTask, config: RunConfig) -> int:
    """How many training examples the client's data partition holds."""
    partition, partitions = data_partition(context, config)
    train, _ = task.load_data(partition, partitions, config.as_dict())
    return _count_examples(train, task)


def train_split_round(
    msg: Message, context: Context, task: SplitTask, config: RunConfig
) -> Message:
    """Train the client's head and tail through its helper for one round.

    Parameters
    ----------
    msg : Message
        The ``train.split`` message: the head's and tail's weights in ``arrays``, a
        :class:`~flsplit.protocol.ClientRound` in ``config``.
    context : Context
        The client's context.
    task : SplitTask
        Model, data, loss and optimizer.
    config : RunConfig
        The round's settings (run config and the message's config).

    Returns
    -------
    Message
        The trained head and tail, and a :class:`~flsplit.protocol.ClientResult`.
    """
    round_ = ClientRound.from_config(config_of(msg))
    values = config.as_dict()
    root_cert, server_name = client_tls(context)
    own_loss: float | None = None
    # Everything of the round runs inside the connection's block: a failure anywhere in
    # it (the data, the model, the app's training function) tells the helper at once
    # (HelperClient.__exit__ sends Abort with the cause) and still fails this handler.
    with HelperClient(
        round_.helper_address,
        client=str(context.node_id),
        token=round_.round_token,
        deadline=config.call_deadline,
        tls_root_cert=root_cert,
        tls_server_name=server_name,
        codecs=node_codecs(context, config),
    ) as helper:
        partition, partitions = data_partition(context, config)
        # the model first, then the data, as a Flower train handler does: building the
        # model draws random numbers, so an app that seeds its data loading shuffles as
        # it did
        split = task.split({**values, "cuts": round_.cuts})
        head, tail = split.head, split.tail
        # the frozen base comes from the node's cache after the first round
        weights = part_state(context, (head, tail), msg.content[ARRAYS], round_.base_hash)
        load_part(head, weights.state, assign=weights.frozen)
        load_part(tail, weights.state, assign=weights.frozen)
        train_data, _ = task.load_data(partition, partitions, values)
        if task.train_fn is not None:
            _check_own_loop(config, round_)
        device = compute_device(context)
        head.to(device)
        tail.to(device)
        emulation = node_emulation(
            context, config, ROLE_CLIENT, round_.server_round, link=round_.link
        )
        if task.train_fn is not None:  # the app's own training function
            result, own_loss = _train_own_loop(
                task, context, split, helper, train_data, values, device, emulation
            )
        elif round_.schedule is not None:  # global sampling: synchronous steps
            optimizer = _optimizer(task, head, tail, values)
            result = train_sync(
                head,
                tail,
                helper,
                _all_samples(task, train_data),
                round_.schedule[:, 0],
                task.loss_fn,
                optimizer,
                client_parts=round_.client_parts,
                seed=config.sync.seed * 100_003 + partition,
                offset=round_.sample_offset,
                emulation=emulation,
            )
        else:
            result = train_split(
                head,
                tail,
                helper,
                _on_device(task.batches(train_data), device),
                task.loss_fn,
                _optimizer(task, head, tail, values),
                config.local_epochs,
                emulation=emulation,
                # a planned chain's own count, else the run config's
                micro_batches=round_.micro_batches or config.chain.micro_batches,
                proximal_mu=config.proximal_mu,
                proximal_form=config.proximal_term,
            )
    arrays = ArrayRecord(  # the trainable tensors and buffers: the base stays here
        {
            k: v.detach().cpu()
            for k, v in without({**head.state_dict(), **tail.state_dict()},
                                weights.frozen).items()
        }
    )
    if own_loss is not None:  # the app's loop: its loss, its data set's size (as unsplit)
        examples = _count_examples(train_data, task) or result.examples
        loss, accuracy = own_loss, float("nan")
    else:
        examples, loss, accuracy = result.examples, result.loss, result.accuracy
    metrics = ClientResult(
        examples=examples,
        loss=loss,
        accuracy=accuracy,
        batches=result.batches,
        stage1_ms=result.stage1_ms,
        stage3_ms=result.stage3_ms,
        stage5_ms=result.stage5_ms,
        helper_service_ms=result.helper_service_ms,
        started=result.started,
        ended=result.ended,
        load_ms=result.load_ms,
        steady_batch_ms=result.steady_batch_ms,
        bytes_up=helper.bytes_up,
        bytes_down=helper.bytes_down,
    )
    out = reply(msg, arrays, metrics.to_metrics())
    with_base_hash(out.content, weights.held)
    return out


def _optimizer(task: SplitTask, head: Any, tail: Any, values: dict) -> torch.optim.Optimizer:
    return task.optimizer_fn(itertools.chain(head.parameters(), tail.parameters()), values)


def _check_own_loop(config: RunConfig, round_: ClientRound) -> None:
    """Refuse the settings an app's own training loop cannot run with, naming the fix."""
    if round_.schedule is not None:
        raise ValueError(
            f"run config sampler={config.sync.sampler!r}: synchronous steps run flsplit's own "
            "loop; with SplitTask(train_fn=...) set sampler='local'"
        )
    if config.chain.length > 1 or config.chain.micro_batches > 1:
        raise ValueError(
            f"run config chain-length={config.chain.length}, micro-batches="
            f"{config.chain.micro_batches}: chains and micro-batches run flsplit's own loop; "
            "with SplitTask(train_fn=...) set both to 1"
        )
    if config.helper_memory != "per-client":
        raise ValueError(
            f"run config helper-memory={config.helper_memory!r}: a shared body cannot follow "
            "each client's own optimizer; with SplitTask(train_fn=...) use 'per-client'"
        )


def _train_own_loop(
    task: SplitTask,
    context: Context,
    split: Any,
    helper: HelperClient,
    train_data: Any,
    values: dict[str, Any],
    device: torch.device,
    emulation: Any,
) -> tuple[TrainResult, float]:
    """Run the app's ``train_fn`` on the split model; return the measured round and the
    loss the function reported (NaN if none)."""
    assert task.train_fn is not None
    body_modules = {name.split(".")[0] for name, _ in split.body.named_modules() if name}
    warm_up()  # as flsplit's own loop, which builds its optimizer before the round's clock
    with RemoteBody(helper, split.head, split.tail, emulation) as body:
        model = ClientModel(split.head, split.tail, body, body_modules, split.model_type)
        if task.restore_state is not None:
            task.restore_state(model, context)
        model.to(device)
        reported = task.train_fn(model, train_data, values, device)
        result = body.finish()
    if task.save_state is not None:
        task.save_state(model, context)
    return result, _reported_loss(reported)


def _reported_loss(value: Any) -> float:
    """The train loss a training function returned: a number, or ``train_loss`` / ``loss``
    of a dict (NaN if it returned neither)."""
    if isinstance(value, Mapping):
        value = value.get(TRAIN_LOSS, value.get("loss"))
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, int | float) else float("nan")


def _on_device(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` moved to ``device`` as they are read (each epoch iterates again)."""
    if device.type == "cpu":
        return batches
    return _DeviceBatches(batches, device)


class _DeviceBatches:
    def __init__(self, batches: Iterable, device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, labels in self.batches:  # inputs: a tensor or named tensors
            yield (to_device(inputs, self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))


def train_full_model(
    msg: Message, context: Context, task: SplitTask, config: RunConfig
) -> Message:
    """Plain local training of the full model on the client's data (FedAvg comparison).

    Returns
    -------
    Message
        The trained model and Flower's train metrics.
    """
    values = config.as_dict()
    partition, partitions = data_partition(context, config)
    train_data, _ = task.load_data(partition, partitions, values)
    model = task.model_fn(values)
    model.load_state_dict(state_dict_of(msg.content[ARRAYS]), strict=True)
    optimizer = task.optimizer_fn(model.parameters(), values)
    loss, acc, examples = train_full(
        model, task.batches(train_data), task.loss_fn, optimizer, config.local_epochs
    )
    return reply(msg, ArrayRecord(model.state_dict()), train_metrics(examples, loss, acc))


def evaluate_full_model(
    msg: Message, context: Context, task: SplitTask, config: RunConfig
) -> Message:
    """The full global model on the client's validation data.

    The body runs on the client here, so evaluation needs no helper and no labels leave
    the client.

    Returns
    -------
    Message
        Flower's evaluate metrics.
    """
    values = config.as_dict()
    partition, partitions = data_partition(context, config)
    _, val_data = task.load_data(partition, partitions, values)
    model = task.model_fn(values)
    model.load_state_dict(state_dict_of(msg.content[ARRAYS]), strict=True)
    loss, acc, examples = evaluate_model(model, task.batches(val_data), task.loss_fn)
    content = RecordDict({METRICS: eval_metrics(examples, loss, acc)})
    return Message(content, reply_to=msg)


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
    # A loader's dataset knows its length; other iterables are counted batch by batch.
    dataset = getattr(batches, "dataset", None)
    if dataset is not None:
        return len(dataset)
    return sum(int(labels.shape[0]) for _, labels in task.batches(batches))
