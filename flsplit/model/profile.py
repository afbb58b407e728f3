"""Per-layer training costs of a model on this machine, in the shared profile format.

The model is split at every candidate cut (:func:`flsplit.model.splitting.candidate_cuts`); each
segment is one profiled "layer". For every segment the profiler measures, per batch,
forward, backward and update (SGD step) time, the size of its output activation (what
crosses a cut placed after it), its parameter size, and the memory it needs while
training (parameters, gradients, tensors saved for backward, output). Times are the
median of ``repeats`` measured runs after ``warmup`` runs.

The JSON it writes has the layout of ``shared/profiles/*.json`` (``layers`` with
``activation_kib`` and ``weights_kib``; ``devices`` with ``forward_ms``, ``backward_ms``
and ``update_ms`` per layer), so measured and published profiles are interchangeable;
it adds ``batch_size``, each layer's ``name`` and ``memory_kib``, and the device's
``peak_rss_mib``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flsplit.model.splitting import candidate_cuts, split_model
from flsplit.runtime.memory import peak_rss_mib, tensor_nbytes

KIB = 1024.0


def _param_bytes(module: nn.Module) -> int:
    return sum(tensor_nbytes(p) for p in module.parameters())


def _tensors(value: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a part's output: a tensor, a tuple, or a ``ModelOutput``'s logits."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, tuple):
        return tuple(v for v in value if isinstance(v, torch.Tensor))
    return (value.logits,)


def _received(sent: Any) -> tuple[torch.Tensor, ...]:
    """What the next part receives: detached, floating-point tensors needing a gradient."""
    return tuple(t.detach().requires_grad_(t.requires_grad) for t in _tensors(sent))


class _SavedBytes:
    """Counts the bytes autograd saves for backward while active."""

    def __init__(self) -> None:
        self.total = 0

    def __enter__(self) -> _SavedBytes:
        def pack(tensor: torch.Tensor) -> torch.Tensor:
            self.total += tensor_nbytes(tensor)
            return tensor

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class _WallClock:
    """Seconds of wall time since :meth:`start`."""

    def start(self) -> Any:
        return time.perf_counter()

    def since(self, start: Any) -> float:
        return time.perf_counter() - start


class _OwnClock:
    """Seconds since :meth:`start`, the smaller of wall and process CPU time."""

    def start(self) -> Any:
        return time.perf_counter(), time.process_time()

    def since(self, start: Any) -> float:
        wall, cpu = start
        return min(time.perf_counter() - wall, time.process_time() - cpu)


def profile_model(
    model: nn.Module,
    example_input: Any,
    *,
    model_name: str = "model",
    dataset: str = "",
    device_name: str = "this-machine",
    role: str = "client",
    repeats: int = 5,
    warmup: int = 2,
    cuts: Sequence[str] | None = None,
    own_time: bool = False,
) -> dict[str, Any]:
    """Measure per-layer training costs of ``model`` for one batch like ``example_input``.

    Parameters
    ----------
    model : nn.Module
        The model (not modified: it is split into copies).
    example_input : torch.Tensor or Mapping of str to torch.Tensor
        One batch; its first dimension is the batch size profiled. A mapping is passed
        as ``model(**inputs)`` (a model split at its blocks, :mod:`flsplit.model.blocks`).
    model_name, dataset : str
        Labels written to the profile.
    device_name : str
        Key of this machine in the profile's ``devices``.
    role : str
        ``"client"`` or ``"helper"``, as in the shared profiles.
    repeats, warmup : int
        Measured and discarded runs; times are medians over the measured ones.
    cuts : sequence of str, optional
        Layer boundaries (default: every candidate cut).
    own_time : bool
        Time each step as the smaller of its wall time and the CPU time the process
        spent on it (as emulation stretches compute): on a machine busy with other
        processes a step of a fraction of a millisecond waits for a core many times its
        length, which the wall clock counts and the CPU time does not.

    Returns
    -------
    dict
        A profile in the shared format with a single device entry.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    clock = _OwnClock() if own_time else _WallClock()
    boundaries = list(cuts) if cuts is not None else candidate_cuts(model, example_input)
    split = split_model(model, boundaries, example_input)
    parts = split.parts
    for part in parts:
        part.train()
    optimizers = [
        torch.optim.SGD(p.parameters(), lr=1e-3) if any(True for _ in p.parameters()) else None
        for p in parts
    ]
    target = None
    forward: list[list[float]] = [[] for _ in parts]
    backward: list[list[float]] = [[] for _ in parts]
    update: list[list[float]] = [[] for _ in parts]
    activation = [0] * len(parts)
    saved = [0] * len(parts)
    for run in range(warmup + repeats):
        measured = run >= warmup
        inputs: list[tuple[torch.Tensor, ...]] = []
        outputs: list[Any] = []
        x = example_input
        for i, part in enumerate(parts):
            x_in = _received(x) if i else ()
            with _SavedBytes() as counter:
                start = clock.start()
                y = part(*x_in) if i else part(x)
                elapsed = clock.since(start)
            if measured:
                forward[i].append(elapsed)
            activation[i] = sum(tensor_nbytes(t) for t in _tensors(y))
            saved[i] = counter.total
            inputs.append(x_in)
            outputs.append(y)
            x = y
        logits = _tensors(outputs[-1])[0]
        if target is None:
            target = torch.zeros(logits.shape[0], dtype=torch.long)
        for i in reversed(range(len(parts))):
            start = clock.start()
            if i == len(parts) - 1:
                nn.functional.cross_entropy(logits.float().flatten(1), target).backward()
            else:
                flows = [
                    (s, r.grad)
                    for s, r in zip(_tensors(outputs[i]), inputs[i + 1], strict=True)
                    if r.requires_grad
                ]
                torch.autograd.backward([s for s, _ in flows], [g for _, g in flows])
            elapsed = clock.since(start)
            if measured:
                backward[i].append(elapsed)
        for i, optimizer in enumerate(optimizers):
            start = clock.start()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if measured:
                update[i].append(clock.since(start))

    def ms(samples: list[float]) -> float:
        return round(statistics.median(samples) * 1000, 4)

    first = next((name for name, _ in model.named_children()), "input")
    names = [first, *split.cuts]
    layers = [
        {
            "name": names[i],
            "activation_kib": round(activation[i] / KIB, 3),
            "weights_kib": round(_param_bytes(p) / KIB, 3),
            "memory_kib": round((2 * _param_bytes(p) + saved[i] + activation[i]) / KIB, 3),
        }
        for i, p in enumerate(parts)
    ]
    return {
        "model": model_name,
        "dataset": dataset,
        "batch_size": len(logits),
        "units": {
            "time": "ms per batch",
            "size": "KiB per batch (activations) / KiB (weights)",
        },
        "layers": layers,
        "devices": {
            device_name: {
                "role": role,
                "forward_ms": [ms(t) for t in forward],
                "backward_ms": [ms(t) for t in backward],
                "update_ms": [ms(t) for t in update],
                "peak_rss_mib": round(peak_rss_mib(), 1),
                "machine": platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "repeats": repeats,
            }
        },
    }


def validate_profile(profile: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the field when ``profile`` breaks the shared format."""
    for key in ("model", "layers", "devices"):
        if key not in profile:
            raise ValueError(f"profile lacks the field {key!r}")
    layers = profile["layers"]
    if not isinstance(layers, list) or not layers:
        raise ValueError("profile field 'layers' must be a non-empty list")
    for i, layer in enumerate(layers):
        for key in ("activation_kib", "weights_kib"):
            value = layer.get(key)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"layers[{i}].{key} must be a non-negative number, got {value!r}")
    for name, device in profile["devices"].items():
        for key in ("forward_ms", "backward_ms", "update_ms"):
            values = device.get(key)
            if not isinstance(values, list) or len(values) != len(layers):
                raise ValueError(
                    f"devices[{name!r}].{key} must list one time per layer ({len(layers)})"
                )
            if any(not isinstance(v, int | float) or v < 0 for v in values):
                raise ValueError(f"devices[{name!r}].{key} holds a negative or non-number time")


def write_profile(profile: dict[str, Any], path: str | Path) -> Path:
    """Validate and write ``profile`` as JSON."""
    validate_profile(profile)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=1))
    return path
