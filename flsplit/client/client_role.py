"""A client's handlers: its split training through a helper, and the plain full-model
``train`` and ``evaluate`` of :func:`~flsplit.client.app.make_client_app`.

In split training a client trains its head and tail and dials its helper
(``helper-address``, ``round-token``) for the body. When the train message carries a
schedule (``schedule-shape``, ``schedule-counts``: global sampling, run config
``sampler``), it trains its scheduled samples per global step
(:mod:`flsplit.runtime.syncplane`) instead of its local epochs.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from flsplit.client.node import ROLE_CLIENT, client_tls, data_partition, node_emulation
from flsplit.client.records import load_part, reply, state_dict_of
from flsplit.plan.sampling.samplers import unpack_schedule
from flsplit.runtime.dataplane import HelperClient
from flsplit.runtime.syncplane import train_sync
from flsplit.runtime.trainer import train_split
from flsplit.task import SplitTask, evaluate_model, train_full


def count_train_examples(context: Context, task: SplitTask, config: Mapping[str, Any]) -> int:
    """How many training examples the client's data partition holds."""
    partition, partitions = data_partition(context, config)
    train, _ = task.load_data(partition, partitions, config)
    return _count_examples(train, task)


def train_split_round(
    msg: Message, context: Context, task: SplitTask, config: Mapping[str, Any]
) -> Message:
    """Train the client's head and tail through its helper for one round.

    Parameters
    ----------
    msg : Message
        The ``train.split`` message: the head's and tail's weights in ``arrays``.
    context : Context
        The client's context.
    task : SplitTask
        Model, data, loss and optimizer.
    config : Mapping
        The round's settings (run config and the message's config).

    Returns
    -------
    Message
        The trained head and tail, and the round's metrics.
    """
    partition, partitions = data_partition(context, config)
    train_data, _ = task.load_data(partition, partitions, config)
    state = state_dict_of(msg.content["arrays"])
    split = task.split(config)
    head, tail = split.head, split.tail
    load_part(head, state)
    load_part(tail, state)
    optimizer = task.optimizer_fn(itertools.chain(head.parameters(), tail.parameters()), config)
    root_cert, server_name = client_tls(context)
    with HelperClient(
        str(config["helper-address"]),
        client=str(context.node_id),
        token=str(config["round-token"]),
        deadline=float(config["call-deadline"]),
        tls_root_cert=root_cert,
        tls_server_name=server_name,
    ) as helper:
        emulation = node_emulation(context, config, ROLE_CLIENT, link=True)
        if "schedule-counts" in config:  # global sampling: synchronous steps
            counts = unpack_schedule(config)
            if counts.shape[1] != 1:
                raise ValueError(f"schedule of shape {counts.shape} is not one column")
            result = train_sync(
                head,
                tail,
                helper,
                _all_samples(task, train_data),
                counts[:, 0],
                task.loss_fn,
                optimizer,
                client_parts=str(config.get("client-parts", "shared")),
                seed=int(config.get("sampler-seed", 0)) * 100_003 + partition,
                offset=int(config.get("sample-offset", 0)),
                emulation=emulation,
            )
        else:
            result = train_split(
                head,
                tail,
                helper,
                task.batches(train_data),
                task.loss_fn,
                optimizer,
                int(config["local-epochs"]),
                emulation=emulation,
                micro_batches=int(config.get("micro-batches", 1)),
            )
    arrays = ArrayRecord({**head.state_dict(), **tail.state_dict()})
    metrics = {
        "num-examples": result.examples,
        "train_loss": result.loss,
        "train_acc": result.accuracy,
        "batches": result.batches,
        "stage1-ms": result.stage1_ms,
        "stage3-ms": result.stage3_ms,
        "stage5-ms": result.stage5_ms,
        "helper-service-ms": result.helper_service_ms,
        "started": result.started,
        "ended": result.ended,
    }
    return reply(msg, arrays, metrics)


def train_full_model(
    msg: Message, context: Context, task: SplitTask, config: Mapping[str, Any]
) -> Message:
    """Plain local training of the full model on the client's data (FedAvg comparison).

    Returns
    -------
    Message
        The trained model and ``num-examples``, ``train_loss``, ``train_acc``.
    """
    partition, partitions = data_partition(context, config)
    train_data, _ = task.load_data(partition, partitions, config)
    model = task.model_fn(config)
    model.load_state_dict(state_dict_of(msg.content["arrays"]), strict=True)
    optimizer = task.optimizer_fn(model.parameters(), config)
    loss, acc, examples = train_full(
        model, task.batches(train_data), task.loss_fn, optimizer, int(config["local-epochs"])
    )
    metrics = {"num-examples": examples, "train_loss": loss, "train_acc": acc}
    return reply(msg, ArrayRecord(model.state_dict()), metrics)


def evaluate_full_model(
    msg: Message, context: Context, task: SplitTask, config: Mapping[str, Any]
) -> Message:
    """The full global model on the client's validation data.

    The body runs on the client here, so evaluation needs no helper and no labels leave
    the client.

    Returns
    -------
    Message
        ``num-examples``, ``eval_loss``, ``eval_acc``.
    """
    partition, partitions = data_partition(context, config)
    _, val_data = task.load_data(partition, partitions, config)
    model = task.model_fn(config)
    model.load_state_dict(state_dict_of(msg.content["arrays"]), strict=True)
    loss, acc, examples = evaluate_model(model, task.batches(val_data), task.loss_fn)
    metrics = MetricRecord({"num-examples": examples, "eval_loss": loss, "eval_acc": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


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
