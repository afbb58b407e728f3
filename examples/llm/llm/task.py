"""The example's task: the LoRA GPT-2 on the synthetic text, for flsplit.

Batches are dicts ``{"input_ids", "attention_mask", "labels"}``; ``batch_keys`` makes
the first two the model's named inputs and ``labels`` the loss's. The labels are already
shifted (:class:`llm.data.TextDataset`), so :func:`loss_fn` compares position ``t``'s
logits with ``labels[t]`` directly. flsplit's own loop trains (no ``train_fn``), with
:func:`optimizer_fn`: AdamW on the adapters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from flsplit import SplitTask
from llm.data import IGNORE, partition, test_set
from llm.model import example_input, model_fn
from llm.settings import setting


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the labelled tokens of the batch.

    Parameters
    ----------
    logits : torch.Tensor
        ``(batch, tokens, vocabulary)``, the model output's ``.logits``.
    labels : torch.Tensor
        ``(batch, tokens)``, pre-shifted: ``labels[:, t]`` is the token after position
        ``t``, ``-100`` where there is none (padding, the last token).
    """
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )


def optimizer_fn(
    params: Iterable[nn.Parameter], config: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """AdamW with the run config's ``lr`` on the trainable parameters (the adapters)."""
    params = list(params)
    trainable = [p for p in params if p.requires_grad]
    # a part without adapters (a cut before the first block) still gets an optimizer
    return torch.optim.AdamW(trainable or params, lr=float(config.get("lr", 0.01)))


def load_data(
    partition_id: int, num_partitions: int, config: Mapping[str, Any]
) -> tuple[DataLoader, DataLoader]:
    """One client's text (its own sentences; skewed nouns with ``data-alpha > 0``)."""
    return partition(
        partition_id,
        seq_len=int(setting(config, "seq-len")),
        train=int(setting(config, "train-examples")),
        val=int(setting(config, "val-examples")),
        batch_size=int(config.get("batch-size", 16)),
        alpha=float(setting(config, "data-alpha")),
    )


def load_test_data(config: Mapping[str, Any]) -> DataLoader:
    """The server's held-out text."""
    return test_set(
        int(setting(config, "seq-len")), int(setting(config, "test-examples")),
        int(config.get("batch-size", 16)),
    )


TASK = SplitTask(
    model_fn=model_fn,
    load_data=load_data,
    example_input=example_input,
    loss_fn=loss_fn,
    optimizer_fn=optimizer_fn,
    load_test_data=load_test_data,
    batch_keys=(("input_ids", "attention_mask"), "labels"),
)
