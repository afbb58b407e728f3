"""Checkpoints of a split-learning run, so a restarted ServerApp resumes where it stopped.

After every completed round the server writes, into one directory,

- ``round-N.npz``: the global model (``state_dict`` keys -> arrays), written with numpy and
  read back with ``allow_pickle=False``;
- ``checkpoint.json``: the round ``N``, a fingerprint of the run config, the array file's
  name and its SHA-256, and the strategy's own state (node profiles, plan history, round
  times) as plain JSON.

``checkpoint.json`` is replaced atomically after the arrays are on disk, so a crash while
writing leaves the previous checkpoint intact. Only the newest two array files are kept.

The ServerApp's side: :func:`checkpoint_writer` is the strategy's ``on_round_end`` hook
that writes them; :func:`resume_point` and :func:`saved_arrays` pick a run up again, and
:func:`shift_rounds` numbers the resumed run's results by the run's rounds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore import log

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Result

    from strategies.split import SplitStrategy

FORMAT = "flsplit-checkpoint"
VERSION = 1
INDEX = "checkpoint.json"
#: Run-config keys that may change between a run and its resumption.
RESUMABLE_KEYS = frozenset({"num-server-rounds", "checkpoint-dir", "output-dir", "gantt"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run."""


@dataclass
class Checkpoint:
    """The state after ``server_round`` completed rounds."""

    server_round: int
    arrays: dict[str, np.ndarray]
    fingerprint: str
    state: dict[str, Any] = field(default_factory=dict)


def run_fingerprint(run_config: Mapping[str, Any]) -> str:
    """SHA-256 of the run config, without the keys a resumed run may change."""
    relevant = {k: v for k, v in sorted(run_config.items()) if k not in RESUMABLE_KEYS}
    text = json.dumps(relevant, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``directory``; return the index file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays_name = f"round-{checkpoint.server_round}.npz"
    arrays_path = directory / arrays_name
    tmp_arrays = directory / f".{arrays_name}.tmp"
    with tmp_arrays.open("wb") as stream:
        np.savez(stream, **{k: np.asarray(v) for k, v in checkpoint.arrays.items()})
    os.replace(tmp_arrays, arrays_path)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "round": checkpoint.server_round,
        "fingerprint": checkpoint.fingerprint,
        "arrays": arrays_name,
        "arrays_sha256": _sha256(arrays_path),
        "keys": list(checkpoint.arrays),
        "state": checkpoint.state,
    }
    tmp_index = directory / f".{INDEX}.tmp"
    tmp_index.write_text(json.dumps(index, indent=1, default=float))
    os.replace(tmp_index, directory / INDEX)
    for old in directory.glob("round-*.npz"):
        number = old.stem.removeprefix("round-")
        if number.isdigit() and int(number) < checkpoint.server_round - 1:
            old.unlink(missing_ok=True)
    return directory / INDEX


def load_checkpoint(directory: str | Path, fingerprint: str | None = None) -> Checkpoint | None:
    """Read the newest checkpoint in ``directory`` (``None`` if there is none).

    Raises
    ------
    CheckpointError
        If the checkpoint is damaged or belongs to a run with another run config
        (``fingerprint`` given and different).
    """
    directory = Path(directory)
    index_path = directory / INDEX
    if not index_path.exists():
        return None
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{index_path}: not JSON ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{index_path}: not a flsplit checkpoint")
    if index.get("version") != VERSION:
        raise CheckpointError(f"{index_path}: unsupported version {index.get('version')!r}")
    if fingerprint is not None and index.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{index_path} belongs to a run with another run config; resume with the same "
            "run config (num-server-rounds may differ) or choose a new checkpoint-dir"
        )
    server_round = index.get("round")
    name = index.get("arrays")
    if not isinstance(server_round, int) or server_round < 0 or not isinstance(name, str):
        raise CheckpointError(f"{index_path}: fields 'round' and 'arrays' are malformed")
    arrays_path = directory / Path(name).name
    if not arrays_path.exists() or _sha256(arrays_path) != index.get("arrays_sha256"):
        raise CheckpointError(f"{arrays_path}: missing or does not match its checksum")
    with np.load(arrays_path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    order = index.get("keys", list(arrays))
    if set(order) != set(arrays):
        raise CheckpointError(f"{arrays_path}: arrays do not match the keys in {INDEX}")
    return Checkpoint(
        server_round=server_round,
        arrays={key: arrays[key] for key in order},
        fingerprint=str(index.get("fingerprint", "")),
        state=dict(index.get("state") or {}),
    )


def resume_point(
    checkpoint_dir: str, config: Mapping[str, Any], model: Any
) -> Checkpoint | None:
    """Load the checkpoint of this run config into ``model`` (``None``: start afresh).

    Raises
    ------
    CheckpointError
        If the checkpoint is damaged, belongs to another run config or does not fit
        ``model``.
    """
    if not checkpoint_dir:
        return None

    saved = load_checkpoint(checkpoint_dir, run_fingerprint(config))
    if saved is None:
        return None
    try:
        model.load_state_dict(_tensors(saved.arrays), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint_dir}: the model does not match ({err})") from None
    return saved


def saved_arrays(saved: Checkpoint) -> ArrayRecord:
    """The global model of ``saved``, to start the resumed run from."""
    # The saved arrays as they were, not as the model's buffers would cast them
    # (an aggregated num_batches_tracked is a float, say).
    return ArrayRecord(_tensors(saved.arrays))


def _tensors(arrays: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {key: torch.from_numpy(value.copy()) for key, value in arrays.items()}


def checkpoint_writer(
    checkpoint_dir: str, config: Mapping[str, Any]
) -> Callable[[int, ArrayRecord, SplitStrategy], None]:
    """``on_round_end`` hook writing a checkpoint after every round."""
    fingerprint = run_fingerprint(config)

    def write(server_round: int, arrays: ArrayRecord, strategy: SplitStrategy) -> None:
        numpy_arrays = {key: array.numpy() for key, array in arrays.items()}
        save_checkpoint(
            checkpoint_dir,
            Checkpoint(server_round, numpy_arrays, fingerprint, strategy.state()),
        )
        log(INFO, "round %d: checkpoint written to %s", server_round, checkpoint_dir)

    return write


def shift_rounds(result: Result, offset: int) -> None:
    """Number a resumed run's results by flsplit's rounds instead of Flower's."""
    for name in (
        "train_metrics_clientapp",
        "evaluate_metrics_clientapp",
        "evaluate_metrics_serverapp",
    ):
        metrics = getattr(result, name)
        shifted = {r + offset: m for r, m in metrics.items()}
        metrics.clear()
        metrics.update(shifted)
