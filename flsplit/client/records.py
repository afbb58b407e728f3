"""Reading and writing the Flower records of flsplit's messages: a message's config,
weights to and from ``ArrayRecord``, and the ``arrays`` + ``metrics`` reply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from flsplit.protocol import CONFIG, reply_content


def config_of(message: Message) -> dict[str, Any]:
    """The message's ``config`` record as a dict (empty when it carries none)."""
    records = message.content.config_records
    return dict(records[CONFIG]) if CONFIG in records else {}


def state_dict_of(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The weights of an ``ArrayRecord`` as a PyTorch state dict."""
    return arrays.to_torch_state_dict()


def load_part(part: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a part's weights out of a state dict of the whole model (or more parts).

    Raises
    ------
    ValueError
        If ``state`` lacks some of the part's keys.
    """
    keys = part.state_dict().keys()
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"train message lacks weights for {missing[:3]} (+{len(missing)} keys)")
    part.load_state_dict({k: state[k] for k in keys}, strict=True)


def reply(msg: Message, arrays: ArrayRecord, metrics: MetricRecord) -> Message:
    """The reply to a train message: trained weights and their metrics."""
    return Message(reply_content(arrays, metrics), reply_to=msg)
