"""Reading and writing the Flower records of flsplit's messages: a message's config,
weights to and from ``ArrayRecord``, and the ``arrays`` + ``metrics`` reply."""

from __future__ import annotations

from collections.abc import Collection, Mapping
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


def load_part(
    part: torch.nn.Module, state: Mapping[str, torch.Tensor], assign: Collection[str] = ()
) -> None:
    """Load a part's weights out of a state dict of the whole model (or more parts).

    The ``assign`` keys (a frozen base) are not copied: the part's parameters become
    those very tensors, so parts loaded from the same state share their memory.

    Raises
    ------
    ValueError
        If ``state`` lacks some of the part's keys.
    """
    own = part.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        what = (
            f"lacks weights for {missing[:3]} ({len(missing)} keys)" if missing else
            f"has weights of other shapes for {wrong[:3]} ({len(wrong)} keys)"
        )
        raise ValueError(
            f"the train message {what}: the model this node's SplitTask.model_fn builds is "
            "not the one the server split (SplitStrategy.for_model); give both the same model"
        )
    shared = {k: state[k] for k in own if k in assign}
    if not shared:
        part.load_state_dict({k: state[k] for k in own}, strict=True)
        return
    part.load_state_dict({k: state[k] for k in own if k not in shared}, strict=False)
    # assign=True keeps each parameter's requires_grad (False here) and takes the tensor
    part.load_state_dict(shared, strict=False, assign=True)


def reply(msg: Message, arrays: ArrayRecord, metrics: MetricRecord) -> Message:
    """The reply to a train message: trained weights and their metrics."""
    return Message(reply_content(arrays, metrics), reply_to=msg)
