"""The offline default data set: scikit-learn's handwritten digits (shipped, no download).

1,797 8x8 grey images of 10 classes. A fixed, seeded 20% is the server's test set; the
rest is the federated pool, split IID into client partitions, each with 10% held out for
federated evaluation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

SEED = 2024
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """All images (N x 1 x 8 x 8, in [0, 1]) and labels (read once per process)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, data.target.astype(np.int64)


def _pool_and_test() -> tuple[np.ndarray, np.ndarray]:
    _, labels = digits()
    order = np.random.default_rng(SEED).permutation(len(labels))
    n_test = int(len(labels) * TEST_FRACTION)
    return order[n_test:], order[:n_test]


def digits_pool() -> np.ndarray:
    """Indices of the federated pool (all samples but the server's test set)."""
    return _pool_and_test()[0]


def _loader(indices: np.ndarray, batch_size: int, shuffle: bool) -> DataLoader:
    images, labels = digits()
    dataset = TensorDataset(torch.from_numpy(images[indices]), torch.from_numpy(labels[indices]))
    generator = torch.Generator().manual_seed(SEED)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def digits_partition(
    partition_id: int, num_partitions: int, batch_size: int = 32
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders of one client's IID partition."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is not in [0, {num_partitions})")
    pool, _ = _pool_and_test()
    part = np.array_split(pool, num_partitions)[partition_id]
    n_val = max(1, int(len(part) * VAL_FRACTION))
    return _loader(part[n_val:], batch_size, True), _loader(part[:n_val], batch_size, False)


def digits_test(batch_size: int = 256) -> DataLoader:
    """The server's held-out test set."""
    _, test = _pool_and_test()
    return _loader(test, batch_size, False)
