"""The run's history as the ServerApp leaves it behind: ``history.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.serverapp.strategy import Result

from flsplit.protocol import ROUND_WALL_SECONDS
from flsplit.runtime.memory import peak_rss_mib
from strategies.split import SplitStrategy


def write_history(output_dir: Path, result: Result, strategy: SplitStrategy) -> Path:
    """Write per-round metrics and round times as JSON; return the file's path.

    Parameters
    ----------
    output_dir : Path
        Directory to write ``history.json`` into (created if missing).
    result : Result
        The finished run's metrics per round.
    strategy : SplitStrategy
        The run's strategy: round times, helpers' peak memory, synchronous steps.

    Returns
    -------
    Path
        The written file.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    history = {
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "server": {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
        ROUND_WALL_SECONDS: strategy.round_times,
        "helper-peak-rss-mib": strategy.helper_peak_mib,
        "sync-step-examples": strategy.sync_steps,
        "serverapp-peak-rss-mib": peak_rss_mib(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = output_dir / "history.json"
    path.write_text(json.dumps(history, indent=1, default=float))
    return path
