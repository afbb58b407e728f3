"""The offline non-IID sampling experiment: partitioning and a short run."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks.sampling_experiment import RUNS, build_parser
from flsplit.model.data import partition, pathological_partition


def _labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, size=1000)


def _check(parts: list[np.ndarray], labels: np.ndarray, k: int) -> None:
    everything = np.concatenate(parts)
    assert len(everything) == len(set(everything.tolist()))  # disjoint
    assert set(everything.tolist()) == set(range(len(labels)))  # every class is held
    for p in parts:
        assert len(np.unique(labels[p])) == k


def test_pathological_partition_gives_each_client_its_classes() -> None:
    labels = _labels()
    parts = pathological_partition(labels, 20, 2, seed=1)
    _check(parts, labels, 2)
    for i, p in enumerate(parts):  # first class deterministic: every class is used
        assert i % 10 in set(labels[p].tolist())
    again = pathological_partition(labels, 20, 2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    with pytest.raises(ValueError, match="classes_per_partition"):
        pathological_partition(labels, 20, 11, seed=1)


def test_partition_uses_flower_datasets_when_installed_else_says_it_falls_back() -> None:
    labels = _labels()
    parts, how = partition(labels, 20, 2, seed=1)
    if importlib.util.find_spec("flwr_datasets") is not None:
        assert how.startswith("flwr_datasets")
    else:
        assert not how.startswith("flwr_datasets")
    _check(parts, labels, 2)


def test_short_run_prints_every_sampler(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.sampling_experiment import run

    args = build_parser().parse_args(
        ["--clients", "6", "--epochs", "2", "--seeds", "1", "--batch", "30"]
    )
    result = run(args)
    out = capsys.readouterr().out
    for name in RUNS:
        assert name in out
        summary = result["summary"][name]
        assert len(summary["accuracy"]) == 2
        assert 0.0 <= summary["final_accuracy"] <= 1.0
        assert summary["time_stragglers"] >= summary["time"] > 0
    assert result["summary"]["uniform"]["mean_batch"] == pytest.approx(30, abs=1)


def test_runs_as_python_m_benchmarks_sampling_experiment() -> None:
    from benchmarks import sampling_experiment

    args = build_parser().parse_args(["--clients", "4", "--epochs", "1"])
    assert (args.clients, args.epochs, args.batch) == (4, 1, 40)
    assert build_parser().prog == "python -m benchmarks.sampling_experiment"
    assert callable(sampling_experiment.main)
