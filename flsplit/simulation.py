"""Run split learning in Flower's simulation engine with resources that cannot deadlock.

A helper's ``ClientApp`` call blocks while it serves its clients, so every helper and at
least one client must run at the same time. :func:`backend_config_for` gives each
virtual node a fractional CPU share so that the Ray backend starts enough workers, and
:func:`check_concurrency` refuses a configuration that would leave clients waiting for a
helper that never starts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flwr.simulation import run_simulation

from flsplit.client.app import make_client_app
from flsplit.server.app import ResultHook, StrategyFn, default_strategy, make_server_app
from flsplit.task import SplitTask

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is new in Python 3.11; tomli is the same parser, kept as a backport
    import tomli as tomllib

LOG = logging.getLogger("flsplit.simulation")


#: Most virtual nodes run at once by default: each is a process holding torch (a few
#: hundred MiB), so larger federations run their clients in waves.
DEFAULT_MAX_CONCURRENT = 24


def backend_config_for(
    num_supernodes: int, cpus: int | None = None, max_concurrent: int | None = None
) -> dict[str, Any]:
    """Ray backend settings that run ``min(num_supernodes, max_concurrent)`` nodes at once.

    Helpers block while they serve, so ``max_concurrent`` must exceed the number of
    helpers (:func:`check_concurrency` says so); with fewer than ``num_supernodes``
    clients run in waves.
    """
    cpus = cpus or os.cpu_count() or 1
    concurrent = min(num_supernodes, max_concurrent or num_supernodes)
    share = math.floor(cpus / concurrent * 1000) / 1000
    return {
        "init_args": {"num_cpus": cpus},
        "client_resources": {"num_cpus": max(share, 0.001), "num_gpus": 0.0},
    }


def concurrent_workers(backend_config: Mapping[str, Any]) -> int:
    """How many ClientApp calls the Ray backend runs at once with ``backend_config``."""
    cpus = float(backend_config.get("init_args", {}).get("num_cpus", os.cpu_count() or 1))
    per_node = float(backend_config.get("client_resources", {}).get("num_cpus", 2))
    return int(cpus / per_node + 1e-9)


def check_concurrency(num_helpers: int, backend_config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when helpers plus one client cannot run at the same time."""
    workers = concurrent_workers(backend_config)
    if workers < num_helpers + 1:
        raise ValueError(
            f"the simulation backend runs {workers} ClientApp calls at once, but "
            f"{num_helpers} helpers plus at least one client must run together; lower "
            "client-resources num-cpus (e.g. to init num-cpus / num-supernodes) or raise "
            "the backend's num-cpus"
        )


def simulate(
    task: SplitTask,
    run_config: Mapping[str, Any] | None = None,
    num_supernodes: int | None = None,
    backend_config: Mapping[str, Any] | None = None,
    strategy_fn: StrategyFn = default_strategy,
    on_result: ResultHook | None = None,
    verbose: bool = False,
) -> None:
    """Run ``task`` in the simulation engine.

    Parameters
    ----------
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping, optional
        Run settings; ``num-helpers`` virtual nodes serve as helpers, the rest as clients.
    num_supernodes : int, optional
        Virtual nodes in total (default: ``num-helpers + num-clients`` of the run config).
    backend_config : Mapping, optional
        Ray backend settings (default: :func:`backend_config_for`).
    strategy_fn, on_result
        As in :func:`flsplit.server.app.make_server_app`.
    verbose : bool
        Debug logging of the simulation engine.
    """
    settings = task.settings(run_config)  # checks every value before the engine starts
    helpers = settings.num_helpers
    total = num_supernodes or helpers + settings.num_clients
    if total <= helpers:
        raise ValueError(f"num-supernodes={total} leaves no client next to num-helpers={helpers}")
    split = settings.mode == "split"
    chain = settings.chain
    if split and chain.length > helpers:
        raise ValueError(
            f"chain-length={chain.length} needs at least {chain.length} helpers, "
            f"num-helpers={helpers}: raise num-helpers or lower chain-length"
        )
    cap = settings.simulation_concurrency or max(DEFAULT_MAX_CONCURRENT, helpers + 1)
    backend = dict(backend_config) if backend_config else backend_config_for(total, None, cap)
    check_concurrency(helpers if split else 0, backend)
    workers = concurrent_workers(backend)
    config = settings.as_dict()
    # virtual nodes share this machine's cores: one torch thread each unless told
    config["torch-threads"] = settings.torch_threads or 1
    config["simulation-workers"] = workers
    with _engine_workers(workers):
        run_simulation(
            server_app=make_server_app(task, config, strategy_fn=strategy_fn, on_result=on_result),
            client_app=make_client_app(task, config),
            num_supernodes=total,
            backend_config=backend,
            verbose_logging=verbose,
        )


def engine_worker_limit() -> int:
    """ClientApp calls Flower's simulation engine runs at once, whatever the backend allows.

    The engine drives its backend workers from a ``ThreadPoolExecutor()`` with Python's
    default size, ``min(32, os.cpu_count() + 4)``: on a 2-core machine 6 calls at once.
    """
    return min(32, (os.cpu_count() or 1) + 4)


@contextlib.contextmanager
def _engine_workers(workers: int) -> Iterator[None]:
    """Let the in-process simulation engine run ``workers`` ClientApp calls at once.

    Helpers block their worker for a whole round, so on a small machine the engine's
    default thread pool (:func:`engine_worker_limit`) would run clients in waves of
    ``limit - helpers`` and the measured round would say little about the plan. Only
    ``flsplit simulate`` lifts the limit, and only while it runs; with ``flwr run`` the
    limit stands and the strategy checks helpers + 1 against it.
    """
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:  # another Flower layout: nothing to lift
        yield
        return
    original = getattr(vce_api, "ThreadPoolExecutor", None)
    if original is None or workers <= engine_worker_limit():
        yield
        return
    vce_api.ThreadPoolExecutor = functools.partial(original, max_workers=workers)
    try:
        yield
    finally:
        vce_api.ThreadPoolExecutor = original


def read_app_config(app_dir: str | Path) -> dict[str, Any]:
    """Return a Flower app's ``[tool.flwr.app.config]``."""
    pyproject = Path(app_dir) / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(f"{pyproject} not found: is {app_dir} a Flower app directory?")
    data = tomllib.loads(pyproject.read_text())
    return dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def load_app_task(app_dir: str | Path) -> SplitTask:
    """Find the :class:`SplitTask` of a Flower app built with flsplit's factories.

    ``[tool.flsplit] task = "module:attribute"`` in the app's ``pyproject.toml`` names it;
    otherwise the ServerApp component's module must hold exactly one ``SplitTask``.
    """
    import importlib
    import sys

    app_dir = Path(app_dir).resolve()
    data = tomllib.loads((app_dir / "pyproject.toml").read_text())
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    reference = data.get("tool", {}).get("flsplit", {}).get("task")
    if reference:
        module_name, _, attribute = reference.partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    component = data["tool"]["flwr"]["app"]["components"]["serverapp"]
    module = importlib.import_module(component.split(":")[0])
    tasks = [v for v in vars(module).values() if isinstance(v, SplitTask)]
    if len(tasks) != 1:
        raise ValueError(
            f"{component}: found {len(tasks)} SplitTask objects; name one with "
            '[tool.flsplit] task = "module:attribute" in pyproject.toml'
        )
    return tasks[0]


def parse_run_config(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` items (TOML values, bare words as strings), as ``flwr run``."""
    config: dict[str, Any] = {}
    for item in items:
        for pair in item.split():
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"run config item {pair!r} is not key=value")
            try:
                config[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                config[key] = raw
    return config
