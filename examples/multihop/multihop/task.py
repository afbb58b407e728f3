"""The multihop example's task: a small VGG-style network (convolution blocks, then a
classifier) on the offline digits data, trained by flsplit's own loop (chains and
micro-batches run it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from flsplit import SplitTask
from flsplit.model.data import digits_partition, digits_test


class SmallVGG(nn.Module):
    """Five 3x3 convolutions with BatchNorm in three blocks and two linear layers,
    VGG-BN's layout on 8x8 digits; every layer a module of its own, so each is a
    candidate cut. (BatchNorm in a micro-batched piece normalises per micro-batch.)"""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(64)
        self.relu4 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv5 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn5 = nn.BatchNorm2d(128)
        self.relu5 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128, 128)
        self.relu6 = nn.ReLU()
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool1(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.pool2(self.relu4(self.bn4(self.conv4(x))))
        x = self.pool3(self.relu5(self.bn5(self.conv5(x))))
        return self.fc2(self.relu6(self.fc1(self.flatten(x))))


def model_fn(config: Mapping[str, Any]) -> nn.Module:
    """The network, seeded so every run starts from the same weights."""
    torch.manual_seed(int(config.get("seed", 0)))
    return SmallVGG()


TASK = SplitTask(
    model_fn=model_fn,
    example_input=lambda config: torch.zeros(2, 1, 8, 8),
    load_data=lambda pid, n, config: digits_partition(pid, n, int(config["batch-size"])),
    load_test_data=lambda config: digits_test(),
)
