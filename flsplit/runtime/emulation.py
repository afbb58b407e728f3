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
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


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
