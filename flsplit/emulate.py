"""Run-config driven emulation of heterogeneous devices and links (simulation).

Run-config keys:

- ``emulate`` (bool): turn emulation on. Without it nothing is slowed.
- ``client-devices`` / ``helper-devices``: comma-separated preset names; every node draws
  one (seeded by ``seed``, its role and its index), unless its node config names a
  ``device``.
- ``emulation-host``: the preset this machine counts as (default ``vm``); a node's
  compute factor is its preset's over the host's.
- ``link-mbps``: one rate, or a mix ``"1-4:30,5-10:42,16-20:28"`` (ranges in Mbit/s with
  weights); every client-helper pair draws its rate once, seeded.
- ``link-latency-ms``: one-way latency of every transfer.
- ``slowdown``: ``"ROLE:INDEX:FACTOR:ROUND"`` (several separated by ``;``) multiplies that
  node's compute factor by FACTOR from round ROUND on, to test adaptivity.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from flsplit.presets import preset

DEFAULT_LINK_MIX = "1-4:30,5-10:42,16-20:28"


def overall_factor(name: str) -> float:
    """One compute factor per preset: the mean of its forward and backward factors."""
    p = preset(name)
    return (p.forward + p.backward) / 2.0


def device_for(role: str, index: int, config: Mapping[str, Any]) -> str:
    """The preset a node emulates, drawn from the run config's device list."""
    key = "helper-devices" if role == "helper" else "client-devices"
    default = "vm" if role == "helper" else "rpi4"
    names = [n.strip() for n in str(config.get(key, default)).split(",") if n.strip()]
    for name in names:
        preset(name)  # refuse unknown names early, with the list of known ones
    return random.Random(f"{config.get('seed', 0)}:{role}:{index}").choice(names)


def compute_factor(device: str, config: Mapping[str, Any]) -> float:
    """How many times slower than this machine the device computes (at least 1)."""
    host = str(config.get("emulation-host", "vm"))
    return max(overall_factor(device) / overall_factor(host), 1.0)


def slowdown(role: str, index: int, server_round: int, config: Mapping[str, Any]) -> float:
    """Multiplier of a node's compute factor in ``server_round`` (1 when not slowed)."""
    factor = 1.0
    for item in str(config.get("slowdown", "")).split(";"):
        if not item.strip():
            continue
        try:
            who, at, times, start = item.strip().split(":")
            matches = who == role and int(at) == index and server_round >= int(start)
            multiplier = float(times)
        except ValueError:
            raise ValueError(
                f"slowdown item {item!r} is not ROLE:INDEX:FACTOR:ROUND, e.g. 'helper:0:4:3'"
            ) from None
        if matches:
            factor *= multiplier
    return factor


def parse_link_mix(spec: str | float | int) -> list[tuple[float, float, float]]:
    """``"1-4:30,5-10:42"`` -> ``[(1, 4, 30), (5, 10, 42)]``; a number is a fixed rate."""
    if isinstance(spec, int | float):
        return [(float(spec), float(spec), 1.0)]
    buckets = []
    for item in str(spec).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            span, _, weight = item.partition(":")
            low, _, high = span.partition("-")
            buckets.append((float(low), float(high or low), float(weight or 1.0)))
        except ValueError:
            raise ValueError(
                f"link-mbps item {item!r} is not LOW-HIGH:WEIGHT (Mbit/s), e.g. '5-10:42'"
            ) from None
    if not buckets or any(b[0] <= 0 or b[1] < b[0] or b[2] <= 0 for b in buckets):
        raise ValueError(f"link-mbps {spec!r} needs positive rates and weights")
    return buckets


class LinkTable:
    """Seeded per-pair link rates drawn from a mix; the same pair always gets the same."""

    def __init__(self, spec: str | float | int, latency_ms: float = 0.0, seed: int = 0) -> None:
        self.buckets = parse_link_mix(spec)
        self.latency_ms = float(latency_ms)
        self.seed = seed
        self._cache: dict[tuple[int, int], float] = {}

    def __call__(self, client: int, helper: int) -> tuple[float, float]:
        """``(rate Mbit/s, latency ms)`` of the link between ``client`` and ``helper``."""
        key = (client, helper)
        if key not in self._cache:
            rng = random.Random(f"{self.seed}:{client}:{helper}")
            low, high, _ = rng.choices(self.buckets, weights=[b[2] for b in self.buckets])[0]
            self._cache[key] = rng.uniform(low, high)
        return self._cache[key], self.latency_ms
