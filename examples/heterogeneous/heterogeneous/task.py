"""The heterogeneous example's task: the quickstart CNN on the offline digits data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from flsplit import SplitTask
from flsplit.model.data import digits_partition, digits_test
from flsplit.model.zoo import SmallCNN


def model_fn(config: Mapping[str, Any]) -> nn.Module:
    """The small CNN, seeded so every run starts from the same weights."""
    torch.manual_seed(int(config.get("seed", 0)))
    return SmallCNN(1, 8)


TASK = SplitTask(
    model_fn=model_fn,
    example_input=lambda config: torch.zeros(2, 1, 8, 8),
    load_data=lambda pid, n, config: digits_partition(pid, n, int(config["batch-size"])),
    load_test_data=lambda config: digits_test(),
)
