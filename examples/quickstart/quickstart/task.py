"""Model, data and training settings of the quickstart.

Offline by default: scikit-learn's handwritten digits (1,797 8x8 images shipped with the
package). ``dataset = "cifar10"`` in the run config loads CIFAR-10 through Flower Datasets
instead (needs internet and ``pip install "flwr-datasets[vision]"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flsplit import SplitTask
from flsplit.model.data import digits_partition, digits_test
from flsplit.model.zoo import SmallCNN

SEED = 2024
VAL_FRACTION = 0.1


def _shape(config: Mapping[str, Any]) -> tuple[int, int]:
    return (3, 32) if config.get("dataset", "digits") == "cifar10" else (1, 8)


def model_fn(config: Mapping[str, Any]) -> nn.Module:
    """The quickstart model for the configured data set, seeded (run config ``seed``
    shifts the seed: 0 is the quickstart's own)."""
    torch.manual_seed(SEED + int(config.get("seed", 0)))
    channels, size = _shape(config)
    return SmallCNN(channels, size)


def example_input(config: Mapping[str, Any]) -> torch.Tensor:
    """One input batch of the configured data set's shape."""
    channels, size = _shape(config)
    return torch.zeros(2, channels, size, size)


def load_data(
    partition_id: int, num_partitions: int, config: Mapping[str, Any]
) -> tuple[DataLoader, DataLoader]:
    """One client's train and validation loaders (IID partition of the training pool)."""
    batch_size = int(config.get("batch-size", 32))
    if config.get("dataset", "digits") == "cifar10":
        return _cifar10_partition(partition_id, num_partitions, batch_size)
    return digits_partition(partition_id, num_partitions, batch_size)


def load_test_data(config: Mapping[str, Any]) -> DataLoader:
    """The server's held-out test set."""
    if config.get("dataset", "digits") == "cifar10":
        return _cifar10_test(int(config.get("batch-size", 32)))
    return digits_test()


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _cifar_tensors(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = [np.asarray(img, dtype=np.float32) for img in batch["img"]]
    images = torch.stack([torch.from_numpy(a) for a in arrays])
    images = images.permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(_CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.tensor(batch["label"], dtype=torch.int64)


def _cifar10_partition(
    partition_id: int, num_partitions: int, batch_size: int
) -> tuple[DataLoader, DataLoader]:
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    fds = FederatedDataset(
        dataset="uoft-cs/cifar10", partitioners={"train": IidPartitioner(num_partitions)}
    )
    split = fds.load_partition(partition_id).train_test_split(test_size=VAL_FRACTION, seed=SEED)
    train_x, train_y = _cifar_tensors(split["train"][:])
    val_x, val_y = _cifar_tensors(split["test"][:])
    return (
        DataLoader(TensorDataset(train_x, train_y), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(val_x, val_y), batch_size=batch_size),
    )


def _cifar10_test(batch_size: int) -> DataLoader:
    from datasets import load_dataset

    test = load_dataset("uoft-cs/cifar10", split="test")
    x, y = _cifar_tensors(test[:])
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


TASK = SplitTask(
    model_fn=model_fn,
    load_data=load_data,
    example_input=example_input,
    load_test_data=load_test_data,
)
