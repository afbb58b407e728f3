"""Planning instances: stage times, memory needs and capacities, JSON format and validation.

An instance describes one training round of parallel split learning. Every client sends
one batch through five stages; stages 2 and 4 run on the client's helper, the others on
the client (including the transfers to and from the helper). Each stage time is a
``clients x helpers`` matrix in milliseconds because link rates and helper speeds differ
per pair.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INSTANCE_FORMAT = "flsplit-instance"
INSTANCE_VERSION = 1

#: Stage matrix names in execution order, with a one-line meaning each.
STAGES: dict[str, str] = {
    "head_fwd_up": "client head forward + upload of cut-1 activations",
    "body_fwd": "body forward on the helper",
    "tail_fwd_bwd": "download of cut-2 activations + tail forward/loss/backward + upload of "
    "cut-2 gradients",
    "body_bwd": "body backward and update on the helper",
    "down_head_bwd": "download of cut-1 gradients + head backward and update on the client",
}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
#: Stages that occupy the helper (the others run on the client or its links).
HELPER_STAGES: tuple[str, ...] = ("body_fwd", "body_bwd")


class InstanceError(ValueError):
    """An instance (or plan) is invalid; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass
class Instance:
    """One planning instance.

    Parameters
    ----------
    client_ids, helper_ids
        Unique string ids of the ``K`` clients and ``H`` helpers.
    head_fwd_up, body_fwd, tail_fwd_bwd, body_bwd, down_head_bwd
        ``K x H`` arrays of stage times in ms for client ``k`` served by helper ``h``
        (see :data:`STAGES`).
    body_memory
        Length-``K`` memory needed on a helper to hold client ``k``'s body (MiB).
    helper_memory
        Length-``H`` memory capacity of each helper (MiB).
    name
        Free-form label.
    meta
        Free-form provenance (generator parameters, seed, ...), kept in JSON.
    """

    client_ids: list[str]
    helper_ids: list[str]
    head_fwd_up: np.ndarray
    body_fwd: np.ndarray
    tail_fwd_bwd: np.ndarray
    body_bwd: np.ndarray
    down_head_bwd: np.ndarray
    body_memory: np.ndarray
    helper_memory: np.ndarray
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client_ids = [str(c) for c in self.client_ids]
        self.helper_ids = [str(h) for h in self.helper_ids]
        for stage in STAGE_NAMES:
            setattr(self, stage, _as_float_array(getattr(self, stage), stage))
        self.body_memory = _as_float_array(self.body_memory, "body_memory")
        self.helper_memory = _as_float_array(self.helper_memory, "helper_memory")
        validate(self)

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return len(self.client_ids)

    @property
    def num_helpers(self) -> int:
        """Number of helpers ``H``."""
        return len(self.helper_ids)

    def stage(self, name: str) -> np.ndarray:
        """Return the ``K x H`` matrix of stage ``name``."""
        if name not in STAGES:
            raise KeyError(name)
        return getattr(self, name)

    def memory_fits(self) -> np.ndarray:
        """Boolean ``K x H`` matrix: client ``k``'s body fits on an empty helper ``h``."""
        return self.body_memory[:, None] <= self.helper_memory[None, :] + 1e-9

    def critical_paths(self) -> np.ndarray:
        """``K x H`` sum of the five stages: the round time of ``k`` alone on ``h``."""
        return sum(getattr(self, s) for s in STAGE_NAMES)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dictionary (see ``docs/planner.md``)."""
        return {
            "format": INSTANCE_FORMAT,
            "version": INSTANCE_VERSION,
            "name": self.name,
            "units": {"time": "ms", "memory": "MiB"},
            "clients": list(self.client_ids),
            "helpers": list(self.helper_ids),
            "stages": {s: getattr(self, s).tolist() for s in STAGE_NAMES},
            "body_memory": self.body_memory.tolist(),
            "helper_memory": self.helper_memory.tolist(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Instance:
        """Build and validate an instance from its JSON dictionary.

        Raises
        ------
        InstanceError
            With ``field`` naming the first invalid field.
        """
        if not isinstance(data, dict):
            raise InstanceError("<root>", "expected a JSON object")
        if data.get("format", INSTANCE_FORMAT) != INSTANCE_FORMAT:
            raise InstanceError("format", f"expected {INSTANCE_FORMAT!r}")
        version = data.get("version")
        if version != INSTANCE_VERSION:
            raise InstanceError("version", f"unsupported version {version!r}, expected 1")
        for key in ("clients", "helpers", "stages", "body_memory", "helper_memory"):
            if key not in data:
                raise InstanceError(key, "missing")
        stages = data["stages"]
        if not isinstance(stages, dict):
            raise InstanceError("stages", "expected an object of stage matrices")
        for stage in STAGE_NAMES:
            if stage not in stages:
                raise InstanceError(f"stages.{stage}", "missing")
        unknown = sorted(set(stages) - set(STAGE_NAMES))
        if unknown:
            raise InstanceError(f"stages.{unknown[0]}", "unknown stage")
        for key in ("clients", "helpers"):
            if not isinstance(data[key], list):
                raise InstanceError(key, "expected a list of ids")
        arrays = {s: _as_float_array(stages[s], f"stages.{s}") for s in STAGE_NAMES}
        return cls(
            client_ids=data["clients"],
            helper_ids=data["helpers"],
            body_memory=_as_float_array(data["body_memory"], "body_memory"),
            helper_memory=_as_float_array(data["helper_memory"], "helper_memory"),
            name=str(data.get("name", "")),
            meta=dict(data.get("meta") or {}),
            **arrays,
        )


def _non_number(value: Any, where: str) -> str | None:
    """Where in a nested list the first value that is not a JSON number sits, if any.

    numpy would read ``"12"`` as 12.0 and ``true`` as 1.0; a file that says either meant
    something else, so they are refused.
    """
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _non_number(item, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if isinstance(value, bool | str | bytes | np.bool_ | np.str_ | np.bytes_):
        return f"{where}: expected a number, got {value!r}"
    return None


def _as_float_array(value: Any, field_name: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(float, copy=False)
    if isinstance(value, np.ndarray) and value.dtype.kind in "bUSO":
        value = value.tolist()
    found = _non_number(value, "")
    if found is not None:
        where, message = found.split(": ", 1)
        raise InstanceError(field_name, f"{message} at {where or 'top level'}")
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InstanceError(field_name, f"not numeric ({exc})") from None


def _check_values(array: np.ndarray, field_name: str, stages: bool) -> None:
    bad = ~np.isfinite(array) | (array < 0)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        where = "".join(f"[{i}]" for i in index)
        value = float(array[index])
        reason = "NaN" if math.isnan(value) else ("infinite" if math.isinf(value) else
                                                   "negative")
        kind = "time" if stages else "memory"
        raise InstanceError(f"{field_name}{where}", f"{reason} {kind} {value!r}")


def _check_sums(instance: Instance) -> None:
    """Refuse finite values so large that the sums the solvers form overflow to inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        totals = {f"stages.{s}": getattr(instance, s).sum() for s in STAGE_NAMES}
        totals["stages"] = sum(totals.values())  # a horizon: every task one after another
        totals["body_memory"] = instance.body_memory.sum()
        totals["helper_memory"] = instance.helper_memory.sum()
    for name, total in totals.items():
        if not np.isfinite(total):
            raise InstanceError(name, "values too large: their sum overflows to infinity")


def validate(instance: Instance) -> None:
    """Check shapes, values and memory feasibility of ``instance``.

    Raises
    ------
    InstanceError
        With ``field`` naming the offending field, e.g. ``stages.body_fwd[3][1]``.
    """
    num_clients, num_helpers = len(instance.client_ids), len(instance.helper_ids)
    if num_clients == 0:
        raise InstanceError("clients", "at least one client is required")
    if num_helpers == 0:
        raise InstanceError("helpers", "at least one helper is required")
    for key, ids in (("clients", instance.client_ids), ("helpers", instance.helper_ids)):
        if "" in ids:
            raise InstanceError(f"{key}[{ids.index('')}]", "empty id")
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise InstanceError(key, f"duplicate id {duplicate!r}")
    for stage in STAGE_NAMES:
        matrix = getattr(instance, stage)
        if matrix.shape != (num_clients, num_helpers):
            raise InstanceError(
                f"stages.{stage}",
                f"shape {list(matrix.shape)} does not match {num_clients} clients x "
                f"{num_helpers} helpers",
            )
        _check_values(matrix, f"stages.{stage}", stages=True)
    if instance.body_memory.shape != (num_clients,):
        raise InstanceError(
            "body_memory", f"expected {num_clients} values, got shape "
            f"{list(instance.body_memory.shape)}"
        )
    if instance.helper_memory.shape != (num_helpers,):
        raise InstanceError(
            "helper_memory", f"expected {num_helpers} values, got shape "
            f"{list(instance.helper_memory.shape)}"
        )
    _check_values(instance.body_memory, "body_memory", stages=False)
    _check_values(instance.helper_memory, "helper_memory", stages=False)
    _check_sums(instance)
    too_big = ~instance.memory_fits().any(axis=1)
    if too_big.any():
        k = int(np.argmax(too_big))
        raise InstanceError(
            f"body_memory[{k}]",
            f"client {instance.client_ids[k]!r} needs {instance.body_memory[k]:g} MiB but "
            f"the largest helper holds {instance.helper_memory.max():g} MiB",
        )
    if instance.body_memory.sum() > instance.helper_memory.sum() + 1e-9:
        raise InstanceError(
            "helper_memory",
            f"total capacity {instance.helper_memory.sum():g} MiB is below the total body "
            f"memory {instance.body_memory.sum():g} MiB",
        )


def load_instance(path: str | Path) -> Instance:
    """Read and validate an instance JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise InstanceError("<json>", f"{path}: {exc}") from None
    return Instance.from_dict(data)


def save_instance(instance: Instance, path: str | Path) -> None:
    """Write ``instance`` as JSON (format in ``docs/planner.md``)."""
    Path(path).write_text(json.dumps(instance.to_dict(), indent=1) + "\n")


def to_slotted(instance: Instance, slots: int = 100) -> Instance:
    """Return the published slotted form of ``instance``.

    Every client-side and transfer time ``v`` (stages 1, 3, 5) becomes
    ``ceil(slots * v / vmax)`` where ``vmax`` is the largest of those times; helper times
    (stages 2, 4) are scaled the same way and are at least one slot.
    """
    client_side = ("head_fwd_up", "tail_fwd_bwd", "down_head_bwd")
    vmax = max(float(getattr(instance, s).max()) for s in client_side) or 1.0
    scaled: dict[str, np.ndarray] = {}
    for stage in STAGE_NAMES:
        values = np.ceil(slots * getattr(instance, stage) / vmax - 1e-9)
        if stage in HELPER_STAGES:
            values = np.maximum(values, 1.0)
        scaled[stage] = np.maximum(values, 0.0)
    return Instance(
        client_ids=instance.client_ids,
        helper_ids=instance.helper_ids,
        body_memory=instance.body_memory.copy(),
        helper_memory=instance.helper_memory.copy(),
        name=f"{instance.name}-slotted" if instance.name else "slotted",
        meta={**instance.meta, "slotted": slots, "slot_ms": vmax / slots},
        **scaled,
    )
