"""Instance generator for the published scenario families (per-layer device profiles).

A profile JSON (format of ``shared/profiles/*.json``) gives per-layer forward, backward
and update times per device and per-layer activation sizes. For a model cut after
profiled layers ``c1`` and ``c2`` (1-based: the head is layers ``1..c1``, the body
``c1+1..c2``, the tail ``c2+1..L``), client ``k`` on device ``d`` and helper ``h`` on
device ``e`` with link rate ``R`` Mbit/s get::

    head_fwd_up   = F_head(d) + tx(a_c1)
    body_fwd      = F_body(e)
    tail_fwd_bwd  = tx(a_c2) + F_tail(d) + B_tail(d) + U_tail(d) + tx(a_c2)
    body_bwd      = B_body(e) + U_body(e)
    down_head_bwd = tx(a_c1) + B_head(d) + U_head(d)

with ``tx(x) = x KiB * 8.192 / R`` ms. Low heterogeneity: each client is one of the
client devices; high heterogeneity: each of a client's head/tail times is drawn uniformly
between the fastest and the slowest client device. Devices whose profile has no data
(all zero) for the client-side layers of a model are left out for that model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flsplit.plan.instance import STAGE_NAMES, Instance

#: Published cut points (1-based profiled layer after which the model is cut).
CUTS: dict[str, tuple[int, int]] = {"resnet101": (3, 33), "vgg19": (3, 23)}
PROFILE_FILES: dict[str, str] = {
    "resnet101": "resnet101_cifar10.json",
    "vgg19": "vgg19_cifar10.json",
}
HELPER_DEVICES: tuple[str, ...] = ("vm-8vcpu", "laptop")
CLIENT_DEVICES: tuple[str, ...] = ("rpi4", "rpi3", "jetson-gpu", "jetson-cpu")
#: Link-rate buckets (Mbit/s) and their weights as stated in the issue (normalised).
RATE_BUCKETS: tuple[tuple[float, float, float], ...] = (
    (1.0, 4.0, 30.0),
    (5.0, 10.0, 42.0),
    (11.0, 15.0, 12.0),
    (16.0, 20.0, 28.0),
)
KIB_TO_MS_AT_1MBIT = 8.192


def default_profile_dir() -> Path:
    """``$FLSPLIT_PROFILES`` if set, else ``../shared/profiles`` from the working dir."""
    env = os.environ.get("FLSPLIT_PROFILES")
    return Path(env) if env else Path("..") / "shared" / "profiles"


def load_profile(model: str, profile_dir: str | Path | None = None) -> dict[str, Any]:
    """Read the profile of ``model`` (``resnet101`` or ``vgg19``)."""
    if model not in PROFILE_FILES:
        raise ValueError(f"model: unknown {model!r}, expected one of {sorted(PROFILE_FILES)}")
    directory = Path(profile_dir) if profile_dir is not None else default_profile_dir()
    return json.loads((directory / PROFILE_FILES[model]).read_text())


@dataclass(frozen=True)
class PartTimes:
    """Per-batch times (ms) of one device for the three model parts."""

    head_fwd: float
    head_bwd: float
    body_fwd: float
    body_bwd: float
    tail_fwd: float
    tail_bwd: float


def part_times(profile: dict[str, Any], device: str, cuts: tuple[int, int]) -> PartTimes:
    """Sum the per-layer times of ``device`` over head, body and tail."""
    data = profile["devices"][device]
    fwd = np.asarray(data["forward_ms"], dtype=float)
    bwd = np.asarray(data["backward_ms"], dtype=float) + np.asarray(data["update_ms"], float)
    c1, c2 = cuts
    return PartTimes(
        head_fwd=float(fwd[:c1].sum()),
        head_bwd=float(bwd[:c1].sum()),
        body_fwd=float(fwd[c1:c2].sum()),
        body_bwd=float(bwd[c1:c2].sum()),
        tail_fwd=float(fwd[c2:].sum()),
        tail_bwd=float(bwd[c2:].sum()),
    )


def _has_client_data(profile: dict[str, Any], device: str, cuts: tuple[int, int]) -> bool:
    data = profile["devices"][device]
    c1, c2 = cuts
    fwd = np.asarray(data["forward_ms"], dtype=float)
    return bool((fwd[:c1] > 0).all() and (fwd[c2:] > 0).all())


def body_memory_mib(profile: dict[str, Any], cuts: tuple[int, int]) -> float:
    """Body memory on a helper: weights, gradients and momentum plus saved activations."""
    c1, c2 = cuts
    layers = profile["layers"][c1:c2]
    weights = sum(layer["weights_kib"] for layer in layers)
    activations = sum(layer["activation_kib"] for layer in layers)
    return (3 * weights + activations) / 1024.0


def draw_link_rates(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Link rates (Mbit/s) per pair from the bucket mix of :data:`RATE_BUCKETS`."""
    weights = np.array([b[2] for b in RATE_BUCKETS])
    bucket = rng.choice(len(RATE_BUCKETS), size=shape, p=weights / weights.sum())
    low = np.array([b[0] for b in RATE_BUCKETS])[bucket]
    high = np.array([b[1] for b in RATE_BUCKETS])[bucket]
    return rng.uniform(low, high)


def generate_instance(
    model: str,
    num_clients: int,
    num_helpers: int,
    heterogeneity: str = "low",
    seed: int = 0,
    profile_dir: str | Path | None = None,
    memory_slack: float = 1.5,
    profile: dict[str, Any] | None = None,
) -> Instance:
    """Generate one instance of the published family.

    Parameters
    ----------
    model
        ``"resnet101"`` or ``"vgg19"`` (cut points from :data:`CUTS`).
    num_clients, num_helpers
        ``K`` and ``H``.
    heterogeneity
        ``"low"`` (clients are real devices) or ``"high"`` (times drawn per client).
    seed
        Random seed; the same arguments give the same instance.
    profile_dir
        Directory with the profile JSON files (default :func:`default_profile_dir`).
    memory_slack
        Each helper holds ``ceil(memory_slack * K / H)`` client bodies.
    profile
        Already loaded profile (overrides ``profile_dir``).
    """
    if heterogeneity not in ("low", "high"):
        raise ValueError(f"heterogeneity: expected 'low' or 'high', got {heterogeneity!r}")
    if num_clients < 1 or num_helpers < 1:
        raise ValueError("num_clients and num_helpers must be positive")
    profile = profile if profile is not None else load_profile(model, profile_dir)
    cuts = CUTS[model]
    rng = np.random.default_rng(seed)
    layers = profile["layers"]
    act_head = float(layers[cuts[0] - 1]["activation_kib"])
    act_body = float(layers[cuts[1] - 1]["activation_kib"])
    clients_ok = [d for d in CLIENT_DEVICES if d in profile["devices"]
                  and _has_client_data(profile, d, cuts)]
    client_parts = {d: part_times(profile, d, cuts) for d in clients_ok}
    helper_types = [str(rng.choice(HELPER_DEVICES)) for _ in range(num_helpers)]
    helper_parts = [part_times(profile, e, cuts) for e in helper_types]

    fields = ("head_fwd", "head_bwd", "tail_fwd", "tail_bwd")
    client_times = np.zeros((num_clients, len(fields)))
    client_types: list[str] = []
    for k in range(num_clients):
        if heterogeneity == "low":
            device = str(rng.choice(clients_ok))
            client_types.append(device)
            client_times[k] = [getattr(client_parts[device], f) for f in fields]
        else:
            client_types.append("drawn")
            for i, f in enumerate(fields):
                values = [getattr(p, f) for p in client_parts.values()]
                client_times[k, i] = rng.uniform(min(values), max(values))
    head_fwd, head_bwd, tail_fwd, tail_bwd = client_times.T
    rates = draw_link_rates(rng, (num_clients, num_helpers))
    tx_head = act_head * KIB_TO_MS_AT_1MBIT / rates
    tx_body = act_body * KIB_TO_MS_AT_1MBIT / rates
    body_fwd = np.array([p.body_fwd for p in helper_parts])[None, :]
    body_bwd = np.array([p.body_bwd for p in helper_parts])[None, :]
    need = body_memory_mib(profile, cuts)
    capacity = need * math.ceil(memory_slack * num_clients / num_helpers)
    return Instance(
        client_ids=[f"c{k}" for k in range(num_clients)],
        helper_ids=[f"h{j}" for j in range(num_helpers)],
        head_fwd_up=head_fwd[:, None] + tx_head,
        body_fwd=np.repeat(body_fwd, num_clients, axis=0),
        tail_fwd_bwd=(tail_fwd + tail_bwd)[:, None] + 2 * tx_body,
        body_bwd=np.repeat(body_bwd, num_clients, axis=0),
        down_head_bwd=head_bwd[:, None] + tx_head,
        body_memory=np.full(num_clients, need),
        helper_memory=np.full(num_helpers, capacity),
        name=f"{model}-{heterogeneity}-K{num_clients}-H{num_helpers}-s{seed}",
        meta={
            "generator": "flsplit.plan.generator",
            "model": model,
            "cuts": list(cuts),
            "heterogeneity": heterogeneity,
            "seed": seed,
            "client_devices": client_types,
            "helper_devices": helper_types,
            "memory_slack": memory_slack,
        },
    )


def random_instance(
    num_clients: int,
    num_helpers: int,
    seed: int = 0,
    integer: bool = True,
    max_time: int = 20,
) -> Instance:
    """Small synthetic instance with uniform random stage times (for tests and demos)."""
    rng = np.random.default_rng(seed)
    shape = (num_clients, num_helpers)

    def draw(low: int) -> np.ndarray:
        values = rng.uniform(low, max_time, size=shape)
        return np.floor(values) if integer else values

    memory = rng.integers(1, 4, size=num_clients).astype(float)
    capacity = np.full(num_helpers, max(memory.max(), math.ceil(1.5 * memory.sum() /
                                                                num_helpers)))
    return Instance(
        client_ids=[f"c{k}" for k in range(num_clients)],
        helper_ids=[f"h{j}" for j in range(num_helpers)],
        head_fwd_up=draw(0),
        body_fwd=draw(1),
        tail_fwd_bwd=draw(0),
        body_bwd=draw(1),
        down_head_bwd=draw(0),
        body_memory=memory,
        helper_memory=capacity,
        name=f"random-K{num_clients}-H{num_helpers}-s{seed}",
        meta={"generator": "random_instance", "seed": seed},
    )


def tight_instance(
    num_clients: int,
    num_helpers: int,
    seed: int = 0,
    slack: float = 0.02,
    body_mib: float = 100.0,
) -> Instance:
    """Random instance whose helpers hold only ``slack`` more memory than the clients need.

    Bodies are ``body_mib`` times a factor drawn uniformly in [0.5, 1.5]; the total
    capacity ``(1 + slack) * total need`` is split among the helpers in random shares
    (factors in [0.7, 1.3]), the largest helper at least as large as the largest body.
    Stage times are those of :func:`random_instance`. A packing need not exist.
    """
    base = random_instance(num_clients, num_helpers, seed=seed)
    rng = np.random.default_rng([seed, 1])
    memory = np.round(body_mib * rng.uniform(0.5, 1.5, size=num_clients), 3)
    shares = rng.uniform(0.7, 1.3, size=num_helpers)
    capacity = np.round((1 + slack) * memory.sum() * shares / shares.sum(), 3)
    if capacity.max() < memory.max():
        capacity[int(np.argmax(capacity))] = memory.max()
    return Instance(
        client_ids=base.client_ids,
        helper_ids=base.helper_ids,
        **{s: base.stage(s) for s in STAGE_NAMES},
        body_memory=memory,
        helper_memory=capacity,
        name=f"tight-K{num_clients}-H{num_helpers}-s{seed}",
        meta={"generator": "tight_instance", "seed": seed, "slack": slack},
    )
