"""Emulated heterogeneity: make this machine's wall clock behave like another device.

A node emulating a device ``compute_factor`` times slower than the host makes each
compute step last ``compute_factor`` times the step's own duration on the host, by
sleeping after it. The step's own duration is the smaller of its wall time and the CPU
time the process spent on it: when other processes compete for the cores (many virtual
nodes on one machine) the wall time includes waiting for a core, and stretching that wait
by the factor would emulate a device slower than asked for; CPU time does not include it.

A link of ``rate_mbps`` and ``latency_ms`` costs ``latency + bits / rate`` per transfer,
spent sleeping on the sender side before the bytes go out (uploads) or after they arrive
(downloads). Factors below 1 (a faster device than the host) cannot be emulated by
sleeping and are treated as 1. Without emulation nothing is slowed.

Which device and link each node emulates comes from the run config:

- ``emulate`` (bool): turn emulation on. Without it nothing is slowed.
- ``client-devices`` / ``helper-devices``: comma-separated preset names; every node draws
  one (seeded by ``seed``, its role and its index), unless its node config names a
  ``device``.
- ``emulation-host``: the preset this machine counts as (default ``vm``); a node's
  compute factor is its preset's over the host's.
- ``link-mbps``: one rate, or a mix ``"1-4:30,5-10:42,16-20:28"`` (ranges in Mbit/s with
  weights); every client-helper pair draws its rate once, seeded.
- ``link-latency-ms``: one-way latency of every transfer.
- ``helper-link-mbps``, ``helper-link-latency-ms``: the same for the links between helpers
  of a chain (every helper pair draws its rate once, seeded, the same both ways); empty:
  helper-helper links are free. A relaying helper emulates its link to the next helper
  (:mod:`flsplit.runtime.relay`) with the figures the server sends it, which the chain
  planner plans with.
- ``slowdown``: ``"ROLE:INDEX:FACTOR:ROUND"`` (several separated by ``;``) multiplies that
  node's compute factor by FACTOR from round ROUND on, to test adaptivity.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flsplit.config import RunConfig
from flsplit.model.presets import preset


@dataclass(frozen=True)
class Emulation:
    """How a node stretches compute and transfers.

    Parameters
    ----------
    compute_factor : float
        Emulated device time over host time (>= 1 to have an effect).
    rate_mbps : float
        Link rate in Mbit/s (``0`` means no link emulation).
    latency_ms : float
        One-way latency added to every transfer, in ms.
    """

    compute_factor: float = 1.0
    rate_mbps: float = 0.0
    latency_ms: float = 0.0

    @property
    def active(self) -> bool:
        """Whether anything is slowed."""
        return self.compute_factor > 1.0 or self.rate_mbps > 0 or self.latency_ms > 0

    @contextmanager
    def compute(self) -> Iterator[None]:
        """Time the enclosed compute step and stretch it to ``compute_factor`` times."""
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        self.stretch(start, cpu_start)

    def stretch(self, start: float, cpu_start: float) -> None:
        """Stretch the compute since ``start`` (``time.perf_counter()``) and ``cpu_start``
        (``time.process_time()``) to ``compute_factor`` times; for compute that a
        ``with`` block cannot enclose, such as a user's own training loop between two
        data-plane calls."""
        if self.compute_factor > 1.0:
            wall = time.perf_counter() - start
            own = min(wall, time.process_time() - cpu_start)
            time.sleep(max(own * self.compute_factor - wall, 0.0))

    def transfer_seconds(self, nbytes: int) -> float:
        """Emulated time to move ``nbytes`` over the link."""
        if self.rate_mbps <= 0 and self.latency_ms <= 0:
            return 0.0
        seconds = self.latency_ms / 1000.0
        if self.rate_mbps > 0:
            seconds += nbytes * 8.0 / (self.rate_mbps * 1e6)
        return seconds

    def transfer(self, nbytes: int) -> None:
        """Sleep for the emulated transfer of ``nbytes``."""
        seconds = self.transfer_seconds(nbytes)
        if seconds > 0:
            time.sleep(seconds)


NO_EMULATION = Emulation()


def overall_factor(name: str) -> float:
    """One compute factor per preset: the mean of its forward and backward factors."""
    p = preset(name)
    return (p.forward + p.backward) / 2.0


def device_for(role: str, index: int, config: RunConfig | Mapping[str, Any]) -> str:
    """The preset a node emulates, drawn from the run config's device list."""
    config = RunConfig.of(config)
    spec = config.helper_devices if role == "helper" else config.client_devices
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        preset(name)  # refuse unknown names early, with the list of known ones
    return random.Random(f"{config.seed}:{role}:{index}").choice(names)


def compute_factor(device: str, config: RunConfig | Mapping[str, Any]) -> float:
    """How many times slower than this machine the device computes (at least 1)."""
    host = RunConfig.of(config).emulation_host
    return max(overall_factor(device) / overall_factor(host), 1.0)


def slowdown(
    role: str, index: int, server_round: int, config: RunConfig | Mapping[str, Any]
) -> float:
    """Multiplier of a node's compute factor in ``server_round`` (1 when not slowed)."""
    factor = 1.0
    for item in RunConfig.of(config).slowdown.split(";"):
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


def parse_link_mix(
    spec: str | float | int, key: str = "link-mbps"
) -> list[tuple[float, float, float]]:
    """``"1-4:30,5-10:42"`` -> ``[(1, 4, 30), (5, 10, 42)]``; a number is a fixed rate.
    ``key`` is the run-config key errors name."""
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
                f"{key} item {item!r} is not LOW-HIGH:WEIGHT (Mbit/s), e.g. '5-10:42'"
            ) from None
    if not buckets or any(b[0] <= 0 or b[1] < b[0] or b[2] <= 0 for b in buckets):
        raise ValueError(f"{key} {spec!r} needs positive rates and weights")
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


class HelperLinkTable(LinkTable):
    """Seeded per-pair rates of the links between helpers (by helper index), drawn from a
    mix like :class:`LinkTable`'s (run config ``helper-link-mbps``); a pair has one rate
    both ways. An empty mix emulates latency only (rate 0: no rate emulation)."""

    def __init__(self, spec: str | float | int, latency_ms: float = 0.0, seed: int = 0) -> None:
        self.buckets = parse_link_mix(spec, "helper-link-mbps") if str(spec).strip() else []
        self.latency_ms = float(latency_ms)
        self.seed = seed
        self._cache: dict[tuple[int, int], float] = {}

    def __call__(self, first: int, second: int) -> tuple[float, float]:
        """``(rate Mbit/s, latency ms)`` of the link between helpers ``first`` and
        ``second``."""
        key = (min(first, second), max(first, second))
        if not self.buckets:
            return 0.0, self.latency_ms
        if key not in self._cache:
            rng = random.Random(f"{self.seed}:helpers:{key[0]}:{key[1]}")
            low, high, _ = rng.choices(self.buckets, weights=[b[2] for b in self.buckets])[0]
            self._cache[key] = rng.uniform(low, high)
        return self._cache[key], self.latency_ms


def helper_link_table(config: RunConfig | Mapping[str, Any]) -> HelperLinkTable | None:
    """The emulated helper-helper links of a run config (``helper-link-mbps``,
    ``helper-link-latency-ms``), or ``None``: no ``emulate``, or neither set (free links).

    Raises
    ------
    ValueError
        If ``helper-link-mbps`` is not a rate or a mix (naming the item).
    """
    config = RunConfig.of(config)
    if not config.emulate or (not config.helper_link_mbps
                              and config.helper_link_latency_ms <= 0):
        return None
    return HelperLinkTable(config.helper_link_mbps, config.helper_link_latency_ms,
                           seed=config.seed)
