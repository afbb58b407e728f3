"""Reference models for examples, tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

MODEL_NAMES = ("small-cnn", "resnet18", "resnet50", "vgg11", "mobilenet_v2")


class SmallCNN(nn.Module):
    """A small CNN in three natural parts.

    Head ``conv1``; body ``conv2`` to ``fc1`` (with BatchNorm); tail ``fc2``. Cut it with
    ``cuts=("conv2", "fc2")``.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for digits, 3 for CIFAR-10).
    image_size : int
        Image height and width (8 for digits, 32 for CIFAR-10).
    num_classes : int
        Output classes.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * (image_size // 2) ** 2, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


class LowRankAdapted(nn.Module):
    """A frozen ``Linear`` with a trainable low-rank adapter (LoRA by hand):
    ``base(x) + up(down(x))``, ``up`` starting at zero so the adapted layer starts as the
    base.

    Parameters
    ----------
    features_in, features_out : int
        The base layer's sizes.
    rank : int
        The adapter's rank.
    """

    def __init__(self, features_in: int, features_out: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(features_in, features_out)
        self.base.requires_grad_(False)
        self.down = nn.Linear(features_in, rank, bias=False)
        self.up = nn.Linear(rank, features_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


class AdaptedMLP(nn.Module):
    """An MLP fine-tuned through adapters: every hidden layer a frozen base with a
    low-rank adapter (:class:`LowRankAdapted`), a BatchNorm (buffers) and a trainable
    classifier.

    Modules in order: ``fc_in``, ``act_in``, ``hidden0``, ``act0``, ...,
    ``hidden{depth-1}``, ``act{depth-1}``, ``norm``, ``fc_out``; cut it with
    ``cuts=("hidden0", "norm")`` (head ``fc_in``, body the hidden layers, tail the norm
    and the classifier).

    Parameters
    ----------
    inputs, width, num_classes, rank, depth : int
        Input features, hidden width, output classes, adapter rank, hidden layers.
    """

    def __init__(self, inputs: int = 64, width: int = 64, num_classes: int = 10,
                 rank: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.fc_in = LowRankAdapted(inputs, width, rank)
        self.act_in = nn.ReLU()
        for i in range(depth):
            setattr(self, f"hidden{i}", LowRankAdapted(width, width, rank))
            setattr(self, f"act{i}", nn.ReLU())
        self.norm = nn.BatchNorm1d(width)
        self.fc_out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(self.fc_in(x.flatten(1)))
        for i in range(self.depth):
            x = getattr(self, f"act{i}")(getattr(self, f"hidden{i}")(x))
        return self.fc_out(self.norm(x))


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build one of :data:`MODEL_NAMES` for 32x32 inputs, untrained."""
    import torchvision

    builders = {
        "small-cnn": lambda: SmallCNN(in_channels, 32, num_classes),
        "resnet18": lambda: torchvision.models.resnet18(num_classes=num_classes),
        "resnet50": lambda: torchvision.models.resnet50(num_classes=num_classes),
        "vgg11": lambda: torchvision.models.vgg11(num_classes=num_classes),
        "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=num_classes),
    }
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return builders[name]()
