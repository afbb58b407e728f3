"""The example's own run-config keys and their defaults (flsplit's keys are flsplit's).

They are listed in ``pyproject.toml``'s ``[tool.flwr.app.config]`` too, so that
``--run-config`` may override them; the values here apply where a config lacks them
(code calling ``model_fn({})``, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

APP_DEFAULTS: dict[str, Any] = {
    "seed": 0,              # the base model's random weights
    "n-layer": 6,           # GPT-2 blocks
    "n-embd": 128,          # hidden size
    "n-head": 4,
    "seq-len": 32,          # tokens per sequence (and GPT-2's n_positions)
    "lora-rank": 4,         # LoRA rank r (lora_alpha = 2r)
    "train-examples": 128,  # sequences per client
    "val-examples": 32,
    "test-examples": 128,   # the server's held-out sequences
    "data-alpha": 0.0,      # > 0: each client prefers some nouns (Dirichlet concentration)
}


def setting(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, or the example's default for it."""
    return config.get(key, APP_DEFAULTS[key])
