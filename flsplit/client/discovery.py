"""A node's answer to the server's ``query.split`` message: its role, index, device
information, example count (clients) and data-plane addresses (helpers)."""

from __future__ import annotations

import os
import platform

import torch
from flwr.app import Context, Message

from flsplit.client.base_cache import held_base
from flsplit.client.client_role import count_train_examples
from flsplit.client.node import (
    compute_device,
    helper_addresses,
    node_codec_overrides,
    node_codecs,
    node_device,
    node_emulation,
    node_helper_links,
    node_index,
    node_role,
    simulation_concurrency,
)
from flsplit.config import RunConfig
from flsplit.model.presets import preset
from flsplit.protocol import ROLE_HELPER, NodeReport
from flsplit.runtime.warmup import warm_up
from flsplit.task import SplitTask


def answer_query(
    msg: Message, context: Context, task: SplitTask, config: RunConfig
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
    config : RunConfig
        The run config.

    Returns
    -------
    Message
        A :class:`~flsplit.protocol.NodeReport`: role, index, device, cpus, torch
        threads; with emulation the device preset's compute factor and memory; in
        simulation the Ray backend's concurrency; for helpers the listen and advertised
        addresses, the codecs their node config sets for their next hops and the
        helpers it says they have a link with; for clients their training examples and
        the codecs their data plane uses.
    """
    role = node_role(context, config)
    warm_up()  # the first optimizer's imports: at discovery, not in round 1's first batch
    report = NodeReport(
        role=role,
        index=node_index(context, config, role),
        device=platform.machine() or "unknown",
        compute_device=str(compute_device(context)),
        cpus=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        simulation_concurrency=simulation_concurrency(),
        base_hash=held_base(context),
    )
    device = node_device(context, config, role)
    if device:
        report.device = device
        report.compute_factor = node_emulation(context, config, role).compute_factor
        report.memory_mib = float(preset(device).memory_mib) * (
            config.emulation_memory_scale if config.emulate else 1.0)
    if role == ROLE_HELPER:
        report.listen_address, report.address = helper_addresses(context)
        own = node_codec_overrides(context)
        if "fwd" in own:
            report.activations_codec = str(own["fwd"])
        if "bwd" in own:
            report.gradients_codec = str(own["bwd"])
        links = node_helper_links(context)
        report.helper_links = None if links is None else sorted(links)
    else:
        report.examples = count_train_examples(context, task, config)
        activations, gradients = node_codecs(context, config)
        report.activations_codec, report.gradients_codec = str(activations), str(gradients)
    return Message(report.to_content(), reply_to=msg)
