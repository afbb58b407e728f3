"""Model and node profiles: per-layer sizes and per-device times, as the planners need them.

A layer profile (``profile_<model>.json`` of the profiler) gives per layer the
activation and weight sizes, optionally the measured training memory, and per device
the forward, backward and update times. Memory (MiB) of a set of layers is
``sum(3 * weights_kib + activation_kib) / 1024`` (weights, gradients and momentum plus
saved activations; the formula of :func:`flsplit.plan.generator.body_memory_mib`), or
the sum of the layers' ``memory_kib`` / 1024 when a measured profile gives it for every
layer. :class:`NodeCosts` are one node's per-layer times resolved from a device column
(or a preset's speed relative to the reference device).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flsplit.model.presets import PRESETS, PROFILE_DEVICE_NAMES, REFERENCE_DEVICE


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer sizes of a model plus the raw per-device time columns.

    Attributes
    ----------
    model
        Model name from the profile.
    activation_kib, weights_kib, memory_kib
        Length-``L`` arrays (``memory_kib``: training memory per layer, see the module docstring).
    devices
        Device name -> ``{"forward_ms": [...], "backward_ms": [...], "update_ms": [...]}``.
    """

    model: str
    activation_kib: np.ndarray
    weights_kib: np.ndarray
    memory_kib: np.ndarray
    devices: dict[str, dict[str, Any]]

    @property
    def num_layers(self) -> int:
        """Number of profiled layers ``L``."""
        return len(self.activation_kib)

    def memory_mib(self, start: int, stop: int) -> float:
        """Training memory (MiB) of ``layers[start:stop]``."""
        return float(self.memory_kib[start:stop].sum()) / 1024.0


def layer_profile(data: dict[str, Any]) -> LayerProfile:
    """Validate a profile in the shared format and return a :class:`LayerProfile`.

    Raises
    ------
    ValueError
        Naming the offending field, e.g. ``layers[3].activation_kib``.
    """
    if not isinstance(data, dict):
        raise ValueError("profile: expected a JSON object")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("profile field 'layers' must be a non-empty list")
    sizes: dict[str, list[float]] = {"activation_kib": [], "weights_kib": [], "memory_kib": []}
    for i, layer in enumerate(layers):
        for key in ("activation_kib", "weights_kib"):
            value = layer.get(key) if isinstance(layer, dict) else None
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(f"layers[{i}].{key}: expected a non-negative number, "
                                 f"got {value!r}")
            sizes[key].append(float(value))
    for key, values in sizes.items():
        if not math.isfinite(sum(float(v) for v in values)):
            raise ValueError(f"layers.{key}: values too large: their sum overflows to infinity")
    measured = [layer.get("memory_kib") for layer in layers]
    if all(isinstance(m, int | float) and not isinstance(m, bool) and m >= 0
           for m in measured):
        memory = np.asarray(measured, dtype=float)
    else:
        memory = 3 * np.asarray(sizes["weights_kib"]) + np.asarray(sizes["activation_kib"])
    devices = data.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise ValueError("profile field 'devices' must be a non-empty object")
    for name, device in devices.items():
        for key in ("forward_ms", "backward_ms", "update_ms"):
            values = device.get(key) if isinstance(device, dict) else None
            if not isinstance(values, list) or len(values) != len(layers):
                raise ValueError(f"devices[{name!r}].{key}: expected one time per layer "
                                 f"({len(layers)})")
            if any(isinstance(v, bool) or not isinstance(v, int | float)
                   or not np.isfinite(v) or v < 0 for v in values):
                raise ValueError(f"devices[{name!r}].{key}: negative or non-numeric time")
            # parts add layer times up; a sum of inf would slip past the checks
            if not math.isfinite(sum(float(v) for v in values)):
                raise ValueError(f"devices[{name!r}].{key}: values too large: their sum "
                                 "overflows to infinity")
    return LayerProfile(
        model=str(data.get("model", "")),
        activation_kib=np.asarray(sizes["activation_kib"]),
        weights_kib=np.asarray(sizes["weights_kib"]),
        memory_kib=memory,
        devices=dict(devices),
    )


def load_layer_profile(path: str | Path) -> LayerProfile:
    """Read and validate a profile JSON file (format of ``shared/profiles/*.json``)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return layer_profile(data)


@dataclass(frozen=True)
class NodeCosts:
    """Per-batch costs of one node for every prefix and suffix of the model.

    Index ``c`` of the ``head_*`` arrays is the time of ``layers[:c]``, of the ``tail_*``
    arrays the time of ``layers[c:]`` (length ``L + 1``); ``*_bwd`` includes the update.
    A helper's body time is ``head_*[c2] - head_*[c1]``. ``head_ok[c]`` / ``tail_ok[c]``
    say whether the node has data for every layer of that head / tail (a profile row
    whose forward, backward and update are all 0 means the device could not run it).
    """

    device: str
    head_fwd: np.ndarray
    head_bwd: np.ndarray
    tail_fwd: np.ndarray
    tail_bwd: np.ndarray
    head_ok: np.ndarray
    tail_ok: np.ndarray
    memory_mib: float

    @classmethod
    def from_layers(
        cls,
        device: str,
        forward_ms: Sequence[float],
        backward_ms: Sequence[float],
        update_ms: Sequence[float],
        memory_mib: float,
    ) -> NodeCosts:
        """Costs of a node from its per-layer times."""
        fwd = np.asarray(forward_ms, dtype=float)
        bwd = np.asarray(backward_ms, dtype=float) + np.asarray(update_ms, dtype=float)
        has_data = (fwd > 0) | (bwd > 0)
        zero = np.zeros(1)
        head_fwd, head_bwd = np.concatenate([zero, fwd.cumsum()]), np.concatenate(
            [zero, bwd.cumsum()])
        head_ok = np.concatenate([[True], np.logical_and.accumulate(has_data)])
        tail_ok = np.concatenate([np.logical_and.accumulate(has_data[::-1])[::-1], [True]])
        return cls(device, head_fwd, head_bwd, head_fwd[-1] - head_fwd,
                   head_bwd[-1] - head_bwd, head_ok, tail_ok, float(memory_mib))

    def body(self, c1: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward(+update) time of ``layers[c1:c2]`` on this node."""
        return self.head_fwd[c2] - self.head_fwd[c1], self.head_bwd[c2] - self.head_bwd[c1]


def resolve_device(profile: LayerProfile, device: str, reference: str | None = None
                   ) -> tuple[list[float], list[float], list[float]]:
    """Per-layer ``(forward, backward, update)`` ms of ``device``.

    ``device`` is a column of the profile, or a preset name (:mod:`flsplit.model.presets`)
    whose speed factors scale the ``reference`` column (default: ``vm-8vcpu`` if the
    profile has it, else its only column). The reference column's own preset is looked
    up by name (``vm-8vcpu``, ``laptop``, ``rpi4`` ...); an unknown name counts as the
    reference device ``vm``.
    """
    columns = profile.devices
    if device in columns:
        column = columns[device]
        return (list(column["forward_ms"]), list(column["backward_ms"]),
                list(column["update_ms"]))
    if device not in PRESETS:
        raise ValueError(f"device {device!r} is neither a profile column "
                         f"({', '.join(sorted(columns))}) nor a preset "
                         f"({', '.join(sorted(set(PRESETS) - {REFERENCE_DEVICE}))})")
    if reference is None:
        if REFERENCE_DEVICE in columns:
            reference = REFERENCE_DEVICE
        elif len(columns) == 1:
            reference = next(iter(columns))
        else:
            raise ValueError(f"device {device!r}: preset needs a reference column; the "
                             f"profile has {', '.join(sorted(columns))} (set 'reference')")
    if reference not in columns:
        raise ValueError(f"reference: {reference!r} is not a column of the profile "
                         f"({', '.join(sorted(columns))})")
    names = {v: k for k, v in PROFILE_DEVICE_NAMES.items()}
    ref_preset = PRESETS.get(reference) or PRESETS.get(names.get(reference, ""))
    column = columns[reference]
    return PRESETS[device].scale(column["forward_ms"], column["backward_ms"],
                                 column["update_ms"], reference_factor=ref_preset)


def node_costs(
    profile: LayerProfile,
    device: str,
    memory_mib: float | None = None,
    reference: str | None = None,
) -> NodeCosts:
    """:class:`NodeCosts` of ``device`` (profile column or preset, see
    :func:`resolve_device`); ``memory_mib`` defaults to the preset's memory size."""
    fwd, bwd, upd = resolve_device(profile, device, reference)
    if memory_mib is None:
        inverse = {v: k for k, v in PROFILE_DEVICE_NAMES.items()}
        known = PRESETS.get(device) or PRESETS.get(inverse.get(device, ""))
        if known is None:
            raise ValueError(f"memory_mib: required for device {device!r} (not a preset)")
        memory_mib = float(known.memory_mib)
    if not np.isfinite(memory_mib) or memory_mib <= 0:
        raise ValueError(f"memory_mib: expected a positive number, got {memory_mib!r}")
    return NodeCosts.from_layers(device, fwd, bwd, upd, memory_mib)


def interpolated_client(
    devices: Sequence[NodeCosts], position: Sequence[float], memory_mib: float, name: str
) -> NodeCosts:
    """A client between the fastest and slowest of ``devices``, per part time.

    ``position = (u_head_fwd, u_head_bwd, u_tail_fwd, u_tail_bwd)`` in ``[0, 1]``: for
    every cut, e.g. the head forward time is ``min + u_head_fwd * (max - min)`` over the
    devices' head forward times at that cut. At any single cut this is the high
    heterogeneity draw of :func:`flsplit.plan.generator.generate_instance`.
    """
    arrays = {}
    for key, u in zip(("head_fwd", "head_bwd", "tail_fwd", "tail_bwd"), position,
                      strict=True):
        stacked = np.stack([getattr(d, key) for d in devices])
        low, high = stacked.min(axis=0), stacked.max(axis=0)
        arrays[key] = low + (high - low) * float(u)
    head_ok = np.logical_and.reduce([d.head_ok for d in devices])
    tail_ok = np.logical_and.reduce([d.tail_ok for d in devices])
    return NodeCosts(name, head_ok=head_ok, tail_ok=tail_ok, memory_mib=memory_mib, **arrays)
