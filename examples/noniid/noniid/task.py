"""The noniid example's task: the small CNN on digits, 2 classes per client.

The offline digits pool (:mod:`flsplit.model.data`, its seeded test set held out for the
server) is split with Flower Datasets' ``PathologicalPartitioner`` when ``flwr-datasets``
is installed, else with flsplit's implementation of the same algorithm
(:func:`flsplit.model.data.partition`): every client holds
``classes-per-client`` classes. 10% of each client's samples are its validation set.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flsplit import SplitTask
from flsplit.model.data import VAL_FRACTION, digits, digits_pool, digits_test, partition
from flsplit.model.zoo import SmallCNN


def model_fn(config: Mapping[str, Any]) -> nn.Module:
    """The small CNN, seeded so every run starts from the same weights."""
    torch.manual_seed(int(config.get("seed", 0)))
    return SmallCNN(1, 8)


@functools.lru_cache(maxsize=4)
def client_indices(num_partitions: int, classes: int, seed: int) -> tuple[np.ndarray, ...]:
    """Pool indices of every client's samples."""
    pool = digits_pool()
    _, labels = digits()
    parts, _ = partition(labels[pool], num_partitions, classes, seed)
    return tuple(pool[p] for p in parts)


def load_data(pid: int, n: int, config: Mapping[str, Any]) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of client ``pid`` of ``n``."""
    indices = client_indices(
        n, int(config.get("classes-per-client", 2)), int(config.get("partition-seed", 0))
    )[pid]
    n_val = max(1, int(len(indices) * VAL_FRACTION))
    images, labels = digits()

    def loader(part: np.ndarray, shuffle: bool) -> DataLoader:
        data = TensorDataset(torch.from_numpy(images[part]), torch.from_numpy(labels[part]))
        generator = torch.Generator().manual_seed(pid)
        return DataLoader(
            data, batch_size=int(config["batch-size"]), shuffle=shuffle, generator=generator
        )

    return loader(indices[n_val:], True), loader(indices[:n_val], False)


TASK = SplitTask(
    model_fn=model_fn,
    example_input=lambda config: torch.zeros(2, 1, 8, 8),
    load_data=load_data,
    load_test_data=lambda config: digits_test(),
)
