"""Flower's simulation engine, run so that every helper and a client can work at once.

A helper's ``ClientApp`` call lasts the whole round (it serves its clients until they
finish), so in simulation every helper and at least one client must run at the same time.
Two things bound how many ``ClientApp`` calls run at once:

- the Ray backend's resources, which the federation config sets
  (``flwr run --federation-config "init-args-num-cpus=N client-resources-num-cpus=1"``:
  N calls);
- the engine's own thread pool, which Flower (1.38 to 1.42 at least) creates with Python's
  default size, ``min(32, cpus + 4)`` (6 on a 2-core machine), whatever Ray allows. No
  setting of ``flwr run``, the federation config or the SuperLink changes it.

The engine loads the ``ClientApp`` in its own process just before it creates that pool
(``start_vce`` loads the app to check it, then ``run_api`` builds the pool), so
:func:`~flsplit.client.app.enable_split_learning` calls :func:`lift_engine_limit` and the
pool gets as many threads as the backend has workers. The ``ServerApp`` runs in the same
process, so its check (:func:`strategies.discovery.check_concurrency`) asks
:func:`engine_limit` whether the limit still stands.

Nothing here imports Ray or the engine: outside the simulation engine's process (a
deployed SuperNode, the planner) these functions do nothing.
"""

from __future__ import annotations

import os
import sys
from logging import INFO
from typing import Any

#: The module of Flower's simulation engine that builds the thread pool.
VCE_API = "flwr.server.superlink.fleet.vce.vce_api"
#: Threads the lifted pool may start: the engine submits one long-running task per Ray
#: worker and the pool starts threads only as tasks arrive, so the backend's worker count
#: is what runs.
_UNLIMITED = 1 << 16
_LIFTED = "_flsplit_lifted"


def default_engine_limit() -> int:
    """``ClientApp`` calls Flower's engine runs at once when nothing lifts its limit.

    Python's default ``ThreadPoolExecutor`` size on this machine, ``min(32, cpus + 4)``.
    """
    cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    return min(32, cpus + 4)


def lift_engine_limit() -> bool:
    """Let the simulation engine in this process run as many calls as its backend allows.

    Called when a split-learning ``ClientApp`` is built. Does nothing (and returns False)
    outside a process that has loaded Flower's simulation engine, in the engine's Ray
    workers (the engine runs in the process that started Ray), or when the engine has no
    thread pool to replace (another Flower layout); idempotent.

    Returns
    -------
    bool
        Whether the engine in this process is now limited only by its backend.
    """
    vce = sys.modules.get(VCE_API)
    pool = getattr(vce, "ThreadPoolExecutor", None)
    if pool is None:
        return False
    if getattr(pool, _LIFTED, False):
        return True
    if in_simulation():
        return False

    class BackendSizedPool(pool):  # type: ignore[misc, valid-type]
        """The engine's pool, sized by the tasks it is given instead of the CPU count."""

        def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
            super().__init__(max_workers or _UNLIMITED, *args, **kwargs)

    setattr(BackendSizedPool, _LIFTED, True)
    vce.ThreadPoolExecutor = BackendSizedPool
    from flwr.supercore import log  # Flower's logger: the run's log shows it

    log(
        INFO,
        "flsplit: the simulation engine runs as many ClientApp calls at once as the "
        "backend has workers (Flower's own limit on this machine: %d)",
        default_engine_limit(),
    )
    return True


def engine_limit() -> int | None:
    """The engine's own limit on concurrent ``ClientApp`` calls in this process.

    Returns
    -------
    int or None
        None once :func:`lift_engine_limit` lifted it (the backend alone decides), else
        :func:`default_engine_limit`.
    """
    vce = sys.modules.get(VCE_API)
    if getattr(getattr(vce, "ThreadPoolExecutor", None), _LIFTED, False):
        return None
    return default_engine_limit()


def in_simulation() -> bool:
    """Whether this process runs under Ray, as the simulation engine's nodes do."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())
