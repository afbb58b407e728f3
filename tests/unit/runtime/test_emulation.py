"""Emulated devices and links stretch wall-clock time as configured.

The timing tests run the emulation on a fake clock: they check the sleep it asks for
against the step's duration it measured, which does not depend on how loaded the
machine running the tests is.
"""

import pytest

from flsplit.runtime import emulation as emulate
from flsplit.runtime.emulation import Emulation


class _Clock:
    """Stands in for the ``time`` module of :mod:`flsplit.runtime.emulation`: wall and CPU
    time advance only when a test says so, and every sleep is recorded (and advances the
    wall time by its length)."""

    def __init__(self):
        self.wall = 100.0
        self.cpu = 10.0
        self.sleeps = []

    def perf_counter(self):
        return self.wall

    def process_time(self):
        return self.cpu

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.wall += seconds

    def run(self, cpu, off_cpu=0.0):
        """A step that computes for ``cpu`` seconds and waits ``off_cpu`` seconds for a
        core."""
        self.cpu += cpu
        self.wall += cpu + off_cpu


@pytest.fixture
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(emulate, "time", fake)
    return fake


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_a_measured_step_is_stretched_by_the_factor(clock, factor):
    emulation = Emulation(compute_factor=factor)
    start = clock.wall
    with emulation.compute():
        clock.run(0.1)
    assert clock.sleeps == [pytest.approx((factor - 1.0) * 0.1)]
    assert clock.wall - start == pytest.approx(factor * 0.1)


def test_without_emulation_nothing_is_slowed(clock):
    with Emulation().compute():
        clock.run(0.02)
    Emulation().transfer(10**9)
    assert clock.sleeps == []
    assert not Emulation().active


def test_link_time_is_latency_plus_bits_over_rate(clock):
    link = Emulation(rate_mbps=8.0, latency_ms=5.0)
    assert link.transfer_seconds(1_000_000) == pytest.approx(0.005 + 1.0)
    link.transfer(10_000)
    assert clock.sleeps == [pytest.approx(0.015)]


def test_run_config_emulation_settings():
    config = {"client-devices": "rpi4,laptop", "seed": 1, "emulation-host": "vm"}
    device = emulate.device_for("client", 3, config)
    assert device in ("rpi4", "laptop")
    assert device == emulate.device_for("client", 3, config)  # seeded, stable
    assert emulate.compute_factor("rpi4", config) == pytest.approx((31.77 + 37.19) / 2)
    faster_host = {"emulation-host": "laptop"}
    assert emulate.compute_factor("jetson-gpu", faster_host) == 1.0  # faster: no-op
    assert emulate.slowdown("helper", 0, 3, {"slowdown": "helper:0:4:3"}) == 4.0
    assert emulate.slowdown("helper", 0, 2, {"slowdown": "helper:0:4:3"}) == 1.0
    with pytest.raises(ValueError, match="ROLE:INDEX:FACTOR:ROUND"):
        emulate.slowdown("helper", 0, 1, {"slowdown": "helper:0:4"})
    with pytest.raises(ValueError, match="unknown device preset 'pi9'"):
        emulate.device_for("client", 0, {"client-devices": "pi9"})


def test_link_table_draws_each_pair_once_from_the_mix():
    table = emulate.LinkTable("1-4:30,16-20:70", latency_ms=2.0, seed=5)
    rates = [table(c, h)[0] for c in range(50) for h in range(4)]
    assert all(1 <= r <= 4 or 16 <= r <= 20 for r in rates)
    assert 0.15 < sum(r <= 4 for r in rates) / len(rates) < 0.45
    assert table(3, 1) == table(3, 1) and table(3, 1)[1] == 2.0
    with pytest.raises(ValueError, match="LOW-HIGH:WEIGHT"):
        emulate.LinkTable("fast")


def test_waiting_for_a_core_is_not_stretched(clock):
    """A step that spends most of its wall time off the CPU (as when other processes
    hold the cores) is stretched by its CPU time only."""
    emulation = Emulation(compute_factor=4.0)
    start = clock.wall
    with emulation.compute():
        clock.run(0.05, off_cpu=0.15)
    # CPU 0.05 s x 4 = 0.2 s, which the 0.2 s of wall time already covers.
    assert sum(clock.sleeps) == pytest.approx(0.0, abs=1e-12)
    assert clock.wall - start == pytest.approx(0.2)
    # Less waiting: the sleep tops the step up to 4 x its CPU time, not 4 x its wall time.
    clock.sleeps.clear()
    start = clock.wall
    with emulation.compute():
        clock.run(0.05, off_cpu=0.07)
    assert clock.sleeps == [pytest.approx(0.08)]
    assert clock.wall - start == pytest.approx(0.2)
