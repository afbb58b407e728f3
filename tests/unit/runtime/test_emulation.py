"""Emulated devices and links stretch wall-clock time as configured."""

import time

import pytest

from flsplit.runtime import emulation as emulate
from flsplit.runtime.emulation import Emulation


def _busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_a_measured_step_is_stretched_by_the_factor(factor):
    emulation = Emulation(compute_factor=factor)
    start = time.perf_counter()
    with emulation.compute():
        cpu = time.process_time()
        _busy(0.1)
        cpu = time.process_time() - cpu  # below 0.1 s when other processes took the core
    elapsed = time.perf_counter() - start
    assert elapsed == pytest.approx(max(factor * cpu, 0.1), rel=0.10)
    assert cpu > 0.05, "the busy step hardly ran: the check above would be vacuous"


def test_without_emulation_nothing_is_slowed():
    start = time.perf_counter()
    with Emulation().compute():
        _busy(0.02)
    Emulation().transfer(10**9)
    assert time.perf_counter() - start < 0.03
    assert not Emulation().active


def test_link_time_is_latency_plus_bits_over_rate():
    link = Emulation(rate_mbps=8.0, latency_ms=5.0)
    assert link.transfer_seconds(1_000_000) == pytest.approx(0.005 + 1.0)
    start = time.perf_counter()
    link.transfer(10_000)
    assert time.perf_counter() - start == pytest.approx(0.015, abs=0.005)


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


def test_waiting_for_a_core_is_not_stretched():
    """A step that spends most of its wall time off the CPU (here: sleeping, as when
    other processes hold the cores) is stretched by its CPU time only."""
    emulation = Emulation(compute_factor=4.0)
    start = time.perf_counter()
    with emulation.compute():
        _busy(0.05)
        time.sleep(0.15)
    elapsed = time.perf_counter() - start
    # CPU 0.05 s x 4 = 0.2 s, which the 0.2 s of wall time already covers.
    assert elapsed == pytest.approx(0.2, rel=0.15)
