"""A node's answer to the server's ``query.split`` message: its role, index, device
information, example count (clients) and data-plane addresses (helpers)."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flsplit.client.client_role import count_train_examples
from flsplit.client.node import (
    ROLE_HELPER,
    helper_addresses,
    node_device,
    node_emulation,
    node_index,
    node_role,
    simulation_concurrency,
)
from flsplit.model.presets import preset
from flsplit.task import SplitTask


def answer_query(
    msg: Message, context: Context, task: SplitTask, config: Mapping[str, Any]
) -> Message:
    """Describe this node to the server.

    Parameters
    ----------
    msg : Message
        The ``query.split`` message.
    context : Context
        The node's context.
    task : SplitTask
        Model, data, loss and optimizer (a client counts its training examples).
    config : Mapping
        The run config.

    Returns
    -------
    Message
        ``info`` (role, device, cpus, torch-threads, index; with emulation the device
        preset's compute factor and memory; in simulation the engine's concurrency; for
        helpers the listen and advertised addresses) and ``num-examples`` in ``metrics``.
    """
    role = node_role(context, config)
    info: dict[str, Any] = {
        "role": role,
        "device": platform.machine() or "unknown",
        "cpus": os.cpu_count() or 1,
        "torch-threads": torch.get_num_threads(),
    }
    concurrency = simulation_concurrency(config)
    if concurrency is not None:
        info["simulation-concurrency"] = concurrency
    device = node_device(context, config, role)
    info["index"] = node_index(context, config, role)
    if device:
        info["device"] = device
        info["compute-factor"] = node_emulation(context, config, role).compute_factor
        info["memory-mib"] = float(preset(device).memory_mib)
    examples = 0
    if role == ROLE_HELPER:
        listen, advertised = helper_addresses(context)
        info["listen-address"], info["address"] = listen, advertised
    else:
        examples = count_train_examples(context, task, config)
    reply = RecordDict(
        {"info": ConfigRecord(info), "metrics": MetricRecord({"num-examples": examples})}
    )
    return Message(reply, reply_to=msg)
