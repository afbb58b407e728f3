"""Run split learning in-process in Flower's simulation engine, for tests and benchmarks.

:func:`simulate` drives Flower's Python simulation API (``flwr.simulation.run_simulation``,
deprecated in Flower in favour of ``flwr run``) with flsplit's own ``ServerApp`` built
from a :class:`SplitTask`, so a test can pass a strategy factory and read the run's
result in the same process. Commands do not use it: ``flsplit simulate`` runs an app's own
``ServerApp`` and ``ClientApp`` with ``flwr run`` (:mod:`flsplit.launch`).

A helper's ``ClientApp`` call blocks while it serves its clients, so every helper and at
least one client must run at the same time: :func:`simulate` sizes the Ray backend as
``flsplit simulate`` sizes the federation (:func:`flsplit.launch.federation_config`),
:func:`backend_config_for` gives tests that call ``run_simulation`` themselves a backend
running a given number of nodes at once, and :func:`check_concurrency` refuses one that
would leave clients waiting for a helper that never starts. The engine's own limit on
concurrent calls is lifted by the ``ClientApp`` (:mod:`flsplit.engine`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from flwr.simulation import run_simulation

from flsplit.client.app import make_client_app
from flsplit.launch import federation_config
from flsplit.server.app import ResultHook, StrategyFn, default_strategy, make_server_app
from flsplit.task import SplitTask


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
        Ray backend settings (default: one CPU per node, as many CPUs as nodes run at
        once: :func:`flsplit.launch.federation_config`).
    strategy_fn, on_result
        As in :func:`flsplit.server.app.make_server_app`.
    verbose : bool
        Debug logging of the simulation engine.
    """
    settings = task.settings(run_config)  # checks every value before the engine starts
    federation = federation_config(settings, num_supernodes)
    if backend_config:
        backend = dict(backend_config)
    else:
        backend = {
            "init_args": {"num_cpus": federation["init-args-num-cpus"]},
            "client_resources": {"num_cpus": federation["client-resources-num-cpus"]},
        }
    check_concurrency(settings.num_helpers if settings.mode == "split" else 0, backend)
    config = settings.as_dict()
    # virtual nodes share this machine's cores: one torch thread each unless told
    config["torch-threads"] = settings.torch_threads or 1
    run_simulation(
        server_app=make_server_app(task, config, strategy_fn=strategy_fn, on_result=on_result),
        client_app=make_client_app(task, config),
        num_supernodes=federation["num-supernodes"],
        backend_config=backend,
        verbose_logging=verbose,
    )
