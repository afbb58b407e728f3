"""Checkpoints: round trip, integrity, atomic writes, and which run-config changes a
resumed run may make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flsplit.config import DEFAULT_RUN_CONFIG, RESUMABLE_KEYS, RunConfig
from flsplit.server import atomic
from flsplit.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    fingerprinted,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)


def _checkpoint(server_round: int, config: dict | None = None) -> Checkpoint:
    rng = np.random.default_rng(server_round)
    arrays = {
        "conv1.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "fc.bias": rng.standard_normal(10).astype(np.float32),
    }
    state = {"round_times": {"1": 2.5}}
    if config is None:
        return Checkpoint(server_round, arrays, "f", state)
    return Checkpoint(server_round, arrays, run_fingerprint(config), state, fingerprinted(config))


def _run_config(**changes) -> dict:
    """A whole parsed run config, as the ServerApp fingerprints it, plus an app's key."""
    values = {"dataset": "digits", "cuts": "conv2,fc2", **changes}
    return RunConfig.parse(values).as_dict()


def test_round_trip_keeps_arrays_order_and_state(tmp_path: Path) -> None:
    saved = _checkpoint(3)
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
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
    save_checkpoint(tmp_path, _checkpoint(2, {"lr": 0.1, "seed": 0}))
    with pytest.raises(CheckpointError, match="another run config"):
        load_checkpoint(tmp_path, {"lr": 0.2, "seed": 0})
    # more rounds is the same run
    assert load_checkpoint(tmp_path, {"lr": 0.1, "seed": 0, "num-server-rounds": 9}) is not None


def test_timeouts_limits_and_the_planner_may_change_across_a_resume(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2, _run_config()))
    # what an operator changes after a round timed out, or to place work differently
    changed = _run_config(**{
        "round-timeout": 1800.0,
        "call-deadline": 300.0,
        "client-idle-timeout": 0.0,
        "min-completed-clients": 2,
        "planner": "greedy",
        "planner-time-limit": 5.0,
        "num-server-rounds": 10,
        "output-dir": "elsewhere",
        "fraction-evaluate": 0.5,
        "emulate": True,
        "slowdown": "client:0:2:3",
    })
    loaded = load_checkpoint(tmp_path, changed)
    assert loaded is not None and loaded.server_round == 2


def test_a_change_of_the_trajectory_is_refused_naming_each_key(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(2, _run_config()))
    changed = _run_config(**{"lr": 0.1, "round-timeout": 900.0, "dataset": "cifar10"})
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path, changed)
    message = str(refused.value)
    assert "lr 0.05 -> 0.1" in message
    assert 'dataset "digits" -> "cifar10"' in message  # an app's own key counts too
    assert "round-timeout 600" not in message  # a timeout may change
    assert "--run-config 'dataset=\"digits\" lr=0.05'" in message  # how to set them back


@pytest.mark.parametrize("key, value", [("seed", 1), ("batch-size", 16), ("local-epochs", 2),
                                        ("momentum", 0.9), ("cuts", "conv1,fc2"),
                                        ("num-clients", 5)])
def test_training_keys_are_fingerprinted(tmp_path: Path, key: str, value) -> None:
    save_checkpoint(tmp_path, _checkpoint(1, _run_config()))
    with pytest.raises(CheckpointError, match=f"{key} "):
        load_checkpoint(tmp_path, _run_config(**{key: value}))


def test_a_key_unknown_to_the_checkpoint_is_a_change(tmp_path: Path) -> None:
    # a key that did not exist when the checkpoint was written (an app's new setting)
    save_checkpoint(tmp_path, _checkpoint(1, {"lr": 0.1}))
    with pytest.raises(CheckpointError, match=r"augment \(not set\) -> true"):
        load_checkpoint(tmp_path, {"lr": 0.1, "augment": True})
    assert load_checkpoint(tmp_path, {"lr": 1e-1}) is not None  # same number, same run


def test_a_checkpoint_older_than_a_flsplit_key_resumes_while_the_key_keeps_its_default(
    tmp_path: Path,
) -> None:
    # written before the compression keys existed: their default is what it computed with
    config = _run_config()
    older = {k: v for k, v in config.items()
             if k not in ("compress-activations", "compress-gradients")}
    save_checkpoint(tmp_path, _checkpoint(2, older))
    assert load_checkpoint(tmp_path, config) is not None
    with pytest.raises(CheckpointError, match='compress-activations "none" -> "int8"'):
        load_checkpoint(tmp_path, _run_config(**{"compress-activations": "int8"}))


def test_every_resumable_key_is_a_run_config_key() -> None:
    assert not RESUMABLE_KEYS - set(DEFAULT_RUN_CONFIG)


def test_a_checkpoint_that_kept_only_its_fingerprint_still_resumes(tmp_path: Path) -> None:
    # written before checkpoints recorded their run config: the hash without the four
    # keys left out then
    config = _run_config()
    legacy = {k: v for k, v in config.items()
              if k not in ("num-server-rounds", "checkpoint-dir", "output-dir", "gantt")}
    text = json.dumps(legacy, sort_keys=True, default=str, separators=(",", ":"))
    import hashlib

    saved = _checkpoint(3)
    saved.fingerprint = hashlib.sha256(text.encode()).hexdigest()
    save_checkpoint(tmp_path, saved)
    assert load_checkpoint(tmp_path, _run_config(**{"num-server-rounds": 5})) is not None
    with pytest.raises(CheckpointError, match="another run config"):
        load_checkpoint(tmp_path, _run_config(lr=0.2))


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(obj, stream, **kwargs):
        stream.write('{"format": "flsplit-checkpoint", "ro')  # half the index
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.json, "dump", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, _checkpoint(2))
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.server_round == 1
    assert (tmp_path / "checkpoint.json").read_bytes() == before["checkpoint.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


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
