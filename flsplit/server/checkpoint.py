"""Checkpoints of a split-learning run, so a restarted ServerApp resumes where it stopped.

After every completed round the server writes, into one directory,

- ``round-N.npz``: the global model (``state_dict`` keys -> arrays), written with numpy and
  read back with ``allow_pickle=False``;
- ``checkpoint.json``: the round ``N``, the run config's values that make up its
  fingerprint (every key but :data:`flsplit.config.RESUMABLE_KEYS`) and their SHA-256, the
  array file's name and its SHA-256, and the strategy's own state (metrics of every round
  so far, node profiles, plan history, round times) as plain JSON.

Both files are written to a temporary file, fsynced and renamed over the old one
(:mod:`flsplit.server.atomic`), ``checkpoint.json`` after the arrays are on disk, so a
crash while writing leaves the previous checkpoint intact. Only the newest two array files
are kept.

A resumed run must have the same fingerprinted values: a checkpoint written with another
``lr`` (or seed, data, model, ...) is refused, naming every key that differs with its old
and new value; the keys of :data:`~flsplit.config.RESUMABLE_KEYS` (rounds, timeouts,
limits, planner, output, emulation) may change.

The ServerApp's side: :func:`checkpoint_writer` is the strategy's ``on_round_end`` hook
that writes them; :func:`resume_point` and :func:`saved_arrays` pick a run up again, and
:func:`shift_rounds` numbers the resumed run's results by the run's rounds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore import log

from flsplit.config import DEFAULT_RUN_CONFIG, RESUMABLE_KEYS
from flsplit.server.atomic import write_atomically, write_json_atomically

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Result

    from strategies.split import SplitStrategy

FORMAT = "flsplit-checkpoint"
VERSION = 1
INDEX = "checkpoint.json"
#: The keys earlier checkpoints (without ``run_config`` in ``checkpoint.json``) left out of
#: their fingerprint, so a run they saved still resumes.
_LEGACY_RESUMABLE_KEYS = frozenset({"num-server-rounds", "checkpoint-dir", "output-dir", "gantt"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run."""


@dataclass
class Checkpoint:
    """The state after ``server_round`` completed rounds."""

    server_round: int
    arrays: dict[str, np.ndarray]
    fingerprint: str
    state: dict[str, Any] = field(default_factory=dict)
    #: the fingerprinted run-config values (``None``: a checkpoint that kept only the hash)
    run_config: dict[str, Any] | None = None


def fingerprinted(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config's values that must not change across a resume, as plain JSON.

    Every key but :data:`flsplit.config.RESUMABLE_KEYS`: an app's own keys too.
    """
    return _plain({k: v for k, v in sorted(run_config.items()) if k not in RESUMABLE_KEYS})


def run_fingerprint(run_config: Mapping[str, Any]) -> str:
    """SHA-256 of the run config, without the keys a resumed run may change."""
    return _hash(fingerprinted(run_config))


def config_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Fingerprinted keys whose value differs: key -> (saved value, current value).

    A key missing on one side counts as changed (its value there is ``None``), except an
    flsplit key the saved run predates: its default is what that run computed with, so a
    checkpoint written before the key existed resumes while the key keeps its default.
    Numbers compare by value (``1`` equals ``1.0``), ``true`` equals no number.
    """
    now = fingerprinted(current)
    missing = object()
    changes = {}
    for key in sorted((set(saved) | set(now)) - RESUMABLE_KEYS):
        old, new = saved.get(key, missing), now.get(key, missing)
        if old is missing and key in DEFAULT_RUN_CONFIG:
            old = _plain(DEFAULT_RUN_CONFIG[key])
        if not _same(old, new):
            changes[key] = (None if old is missing else old, None if new is missing else new)
    return changes


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    return bool(old == new)


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, unknown objects as text)."""
    return json.loads(json.dumps(value, default=str))


def _hash(values: Mapping[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _legacy_fingerprint(run_config: Mapping[str, Any]) -> str:
    relevant = {k: v for k, v in sorted(run_config.items()) if k not in _LEGACY_RESUMABLE_KEYS}
    return _hash(relevant)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``directory``; return the index file's path."""
    directory = Path(directory)
    arrays_name = f"round-{checkpoint.server_round}.npz"
    arrays_path = write_atomically(
        directory / arrays_name,
        lambda stream: np.savez(
            stream, **{k: np.asarray(v) for k, v in checkpoint.arrays.items()}
        ),
    )
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
    if checkpoint.run_config is not None:
        index["run_config"] = checkpoint.run_config
    write_json_atomically(directory / INDEX, index)
    for old in directory.glob("round-*.npz"):
        number = old.stem.removeprefix("round-")
        if number.isdigit() and int(number) < checkpoint.server_round - 1:
            old.unlink(missing_ok=True)
    return directory / INDEX


def load_checkpoint(
    directory: str | Path, run_config: Mapping[str, Any] | None = None
) -> Checkpoint | None:
    """Read the newest checkpoint in ``directory`` (``None`` if there is none).

    Parameters
    ----------
    directory : str or Path
        The checkpoint directory.
    run_config : Mapping, optional
        The resuming run's config: the checkpoint must have been written with the same
        values of every key but :data:`flsplit.config.RESUMABLE_KEYS`.

    Raises
    ------
    CheckpointError
        If the checkpoint is damaged or belongs to a run with another run config (the
        message names each differing key with its old and new value).
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
    saved_config = index.get("run_config")
    if saved_config is not None and not isinstance(saved_config, dict):
        raise CheckpointError(f"{index_path}: field 'run_config' is malformed")
    if run_config is not None:
        _check_same_run(index_path, index, run_config)
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
        run_config=saved_config,
    )


def _check_same_run(
    index_path: Path, index: Mapping[str, Any], run_config: Mapping[str, Any]
) -> None:
    """Refuse a checkpoint written with other values of the fingerprinted keys."""
    saved = index.get("run_config")
    if saved is None:
        # Written before checkpoints kept their run config: only the hash can tell.
        if index.get("fingerprint") in (_legacy_fingerprint(run_config),
                                        run_fingerprint(run_config)):
            return
        raise CheckpointError(
            f"{index_path} belongs to a run with another run config (it keeps only a "
            "fingerprint, not which keys); resume with the run config it was written with "
            "(num-server-rounds may differ) or choose a new checkpoint-dir"
        )
    changes = config_changes(saved, run_config)
    if not changes:
        return
    listed = ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())
    restore = " ".join(
        f"{key}={_toml(old)}" for key, (old, _) in changes.items() if old is not None
    )
    raise CheckpointError(
        f"{index_path} was written by a run with another run config: {listed}. These keys "
        "change the model's trajectory, so the run cannot resume with them changed: "
        + (f"set them back (--run-config '{restore}') " if restore else "set them back ")
        + "or choose a new checkpoint-dir (keys that may change across a resume: "
        + ", ".join(sorted(RESUMABLE_KEYS))
        + ")"
    )


def _show(value: Any) -> str:
    return "(not set)" if value is None else json.dumps(value)


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool | int | float | str) else str(value)


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

    saved = load_checkpoint(checkpoint_dir, config)
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
    values = fingerprinted(config)
    fingerprint = _hash(values)

    def write(server_round: int, arrays: ArrayRecord, strategy: SplitStrategy) -> None:
        numpy_arrays = {key: array.numpy() for key, array in arrays.items()}
        save_checkpoint(
            checkpoint_dir,
            Checkpoint(server_round, numpy_arrays, fingerprint, strategy.state(), values),
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
