"""flsplit: parallel split learning with helper nodes for Flower.

The top-level names are imported lazily, so ``flsplit.plan`` stays free of torch and
Flower.
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
    "simulate": "flsplit.simulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flsplit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
