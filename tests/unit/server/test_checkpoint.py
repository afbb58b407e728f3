"""Checkpoints: round trip, integrity, and refusal of another run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flsplit.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)


def _checkpoint(server_round: int, fingerprint: str = "f") -> Checkpoint:
    rng = np.random.default_rng(server_round)
    arrays = {
        "conv1.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
    }
    return Checkpoint(server_round, arrays, fingerprint, {"round_times": {"1": 2.5}})


def test_round_trip_keeps_arrays_order_and_state(tmp_path: Path) -> None:
    saved = _checkpoint(3)
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path, "f")
    assert loaded is not None and loaded.server_round == 3
    assert list(loaded.arrays) == list(saved.arrays)
    for key, value in saved.arrays.items():
        assert loaded.arrays[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded.arrays[key], value)
    assert loaded.state == {"round_times": {"1": 2.5}}


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "missing") is None


def test_newest_round_wins_and_old_files_are_pruned(tmp_path: Path) -> None:
    for server_round in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _checkpoint(server_round))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.server_round == 4
    assert sorted(p.name for p in tmp_path.glob("round-*.npz")) == ["round-3.npz", "round-4.npz"]


def test_other_run_config_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2, run_fingerprint({"lr": 0.1, "seed": 0})))
    with pytest.raises(CheckpointError, match="another run config"):
        load_checkpoint(tmp_path, run_fingerprint({"lr": 0.2, "seed": 0}))
    # more rounds is the same run
    same = run_fingerprint({"lr": 0.1, "seed": 0, "num-server-rounds": 9})
    assert load_checkpoint(tmp_path, same) is not None


def test_damaged_arrays_are_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    path = tmp_path / "round-1.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path)


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    # Replace the arrays with an object array (needs pickle) and fix up the checksum.
    path = tmp_path / "round-1.npz"
    with path.open("wb") as stream:
        np.savez(stream, **{"conv1.weight": np.array([{"x": 1}], dtype=object)})
    index = json.loads((tmp_path / "checkpoint.json").read_text())
    import hashlib

    index["arrays_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    index["keys"] = ["conv1.weight"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_checkpoint(tmp_path)
