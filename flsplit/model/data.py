"""The offline default data set: scikit-learn's handwritten digits (shipped, no download).

1,797 8x8 grey images of 10 classes. A fixed, seeded 20% is the server's test set; the
rest is the federated pool, split IID into client partitions, each with 10% held out for
federated evaluation. :func:`partition` splits labels non-IID instead (a fixed number of
classes per client), for apps such as ``examples/noniid``.
"""

from __future__ import annotations

import functools
import warnings

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


def pathological_partition(
    labels: np.ndarray, num_partitions: int, classes_per_partition: int, seed: int
) -> list[np.ndarray]:
    """Split sample indices so every partition holds exactly ``classes_per_partition``.

    The algorithm of Flower Datasets' ``PathologicalPartitioner`` with
    ``class_assignment_mode="first-deterministic"``: partition ``i`` gets class
    ``i % num_classes`` and further classes drawn at random; the samples of each class
    are divided evenly (``np.array_split``) among the partitions that hold it, then
    every partition is shuffled. The draws need not match that package's bit for bit.

    Parameters
    ----------
    labels : np.ndarray
        Label of every sample.
    num_partitions : int
        Number of partitions (clients).
    classes_per_partition : int
        Distinct classes per partition.
    seed : int
        Seed of the class draws and shuffles.

    Returns
    -------
    list of np.ndarray
        Sample indices of every partition.
    """
    classes = sorted(np.unique(labels).tolist())
    if not 1 <= classes_per_partition <= len(classes):
        raise ValueError(
            f"classes_per_partition must be in [1, {len(classes)}], got {classes_per_partition}"
        )
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    rng = np.random.default_rng(seed)
    held: list[list[int]] = []
    for pid in range(num_partitions):
        mine = [classes[pid % len(classes)]]
        while len(mine) < classes_per_partition:
            label = int(rng.choice(classes))
            if label not in mine:
                mine.append(label)
        held.append(mine)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for label in classes:
        owners = [pid for pid in range(num_partitions) if label in held[pid]]
        if not owners:
            continue
        indices = np.flatnonzero(labels == label)
        if len(owners) > len(indices):
            raise ValueError(
                f"class {label} would go to {len(owners)} partitions but has "
                f"{len(indices)} samples; use fewer partitions"
            )
        for pid, chunk in zip(owners, np.array_split(indices, len(owners)), strict=True):
            parts[pid].extend(chunk.tolist())
    return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]


def partition(
    labels: np.ndarray, num_partitions: int, classes_per_partition: int, seed: int
) -> tuple[list[np.ndarray], str]:
    """Pathological partition of ``labels``: Flower Datasets' if installed, else ours.

    Flower Datasets' ``PathologicalPartitioner`` (``class_assignment_mode=
    "first-deterministic"``) when ``flwr-datasets`` is installed, otherwise
    :func:`pathological_partition`, the same algorithm, so the package does not need it.
    The parameters are :func:`pathological_partition`'s.

    Returns
    -------
    tuple
        Sample indices per partition and the name of the implementation used.
    """
    try:
        from datasets import Dataset
        from flwr_datasets.partitioner import PathologicalPartitioner
    except ImportError:
        parts = pathological_partition(labels, num_partitions, classes_per_partition, seed)
        return parts, "flsplit.model.data.pathological_partition"
    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=classes_per_partition,
        class_assignment_mode="first-deterministic",
        seed=seed,
    )
    partitioner.dataset = Dataset.from_dict(
        {"label": labels.tolist(), "index": np.arange(len(labels)).tolist()}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = [
            np.asarray(partitioner.load_partition(pid)["index"], dtype=np.int64)
            for pid in range(num_partitions)
        ]
    return parts, "flwr_datasets.partitioner.PathologicalPartitioner"
