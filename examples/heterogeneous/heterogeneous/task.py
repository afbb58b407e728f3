"""The heterogeneous example's task: the quickstart CNN on the offline digits data,
trained by the app's own training function (as a Flower app's ``train`` handler calls
it), which the planner measures like flsplit's own loop."""

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


def train(
    net: nn.Module, trainloader: Any, epochs: int, lr: float, momentum: float,
    device: torch.device,
) -> float:
    """Train ``net`` on ``trainloader``; return the mean loss (a Flower app's own loop)."""
    net.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    net.train()
    running, batches = 0.0, 0
    for _ in range(epochs):
        for images, labels in trainloader:
            optimizer.zero_grad()
            loss = criterion(net(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            running += loss.item()
            batches += 1
    return running / max(batches, 1)


TASK = SplitTask(
    model_fn=model_fn,
    example_input=lambda config: torch.zeros(2, 1, 8, 8),
    load_data=lambda pid, n, config: digits_partition(pid, n, int(config["batch-size"])),
    load_test_data=lambda config: digits_test(),
    train_fn=lambda net, data, config, device: train(
        net, data, int(config["local-epochs"]), float(config["lr"]), float(config["momentum"]),
        device,
    ),
)
