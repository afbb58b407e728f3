"""Lifting the simulation engine's own limit on concurrent ClientApp calls."""

from __future__ import annotations

import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

from flsplit import engine


def _fake_engine(monkeypatch) -> types.ModuleType:
    vce = types.ModuleType(engine.VCE_API)
    vce.ThreadPoolExecutor = ThreadPoolExecutor
    monkeypatch.setitem(sys.modules, engine.VCE_API, vce)
    return vce


def test_the_engine_pool_is_sized_by_its_tasks_once_lifted(monkeypatch):
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    monkeypatch.delattr(engine.os, "process_cpu_count", raising=False)
    vce = _fake_engine(monkeypatch)
    assert engine.engine_limit() == 6  # Python's default pool size on 2 cores
    assert engine.lift_engine_limit()
    assert engine.engine_limit() is None
    lifted = vce.ThreadPoolExecutor
    assert engine.lift_engine_limit() and vce.ThreadPoolExecutor is lifted  # idempotent
    # as the engine builds it (no size given), with one long task per backend worker:
    # all 12 run at once (a helper's call lasts the round), where 6 would deadlock
    together = threading.Barrier(12, timeout=30)
    with lifted() as pool:
        calls = [pool.submit(together.wait) for _ in range(12)]
    assert sorted(call.result() for call in calls) == list(range(12))
    with lifted(max_workers=3) as pool:  # an explicit size is kept
        assert pool._max_workers == 3


def test_nothing_is_lifted_outside_the_engine_process(monkeypatch):
    monkeypatch.delitem(sys.modules, engine.VCE_API, raising=False)
    assert not engine.lift_engine_limit()  # a deployed SuperNode: no engine here
    vce = _fake_engine(monkeypatch)

    class Ray:
        @staticmethod
        def is_initialized() -> bool:
            return True

    monkeypatch.setitem(sys.modules, "ray", Ray)
    assert engine.in_simulation()
    assert not engine.lift_engine_limit()  # a Ray worker: the engine runs in the driver
    assert vce.ThreadPoolExecutor is ThreadPoolExecutor
