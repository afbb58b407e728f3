"""flsplit: parallel split learning with helper nodes for Flower.

What a Flower app uses:

- :class:`SplitTask`: the model, data, loss and optimizer, described once;
- :func:`enable_split_learning` (add split learning to an existing ``ClientApp``) or
  :func:`make_client_app` (a complete one);
- :class:`SplitStrategy` (wraps any Flower strategy) or :class:`PlannedSplitStrategy`
  (every round planned) in an existing ``ServerApp``, or :func:`make_server_app`;
- :class:`RunConfig` and :data:`DEFAULT_RUN_CONFIG`: the run-config keys and defaults;
- :func:`simulate_app`: what ``flsplit simulate`` does: run a Flower app with ``flwr run``
  on a local simulation SuperLink of its own;
- :func:`simulate`: run a task in-process in the simulation engine (tests, benchmarks).

The names are imported lazily, so ``flsplit.plan`` stays free of torch and Flower.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SplitTask": "flsplit.task",
    "DEFAULT_RUN_CONFIG": "flsplit.config",
    "RunConfig": "flsplit.config",
    "make_client_app": "flsplit.client.app",
    "enable_split_learning": "flsplit.client.app",
    "make_server_app": "flsplit.server.app",
    "SplitStrategy": "strategies.split",
    "PlannedSplitStrategy": "strategies.planned",
    "simulate": "flsplit.simulation",
    "simulate_app": "flsplit.launch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flsplit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
