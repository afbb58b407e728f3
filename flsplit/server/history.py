"""The run's history as the ServerApp leaves it behind: ``history.json``.

It is replaced atomically (:mod:`flsplit.server.atomic`) after every round, once the
round's evaluation is done (:func:`history_writer`, the strategy's ``on_round_end`` hook
with the checkpoint's), and once more when the run ends, so a run killed in round ``k``
leaves the rounds before ``k``. A resumed run starts from the rounds its checkpoint holds
(the strategy's state) and, for a checkpoint that holds none, from the rounds up to the
checkpoint's in the ``history.json`` it finds (:func:`history_state`); rounds that ran after
the checkpoint was written are run again and replaced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.supercore import log

from flsplit.protocol import DATA_PLANE_BYTES, ROUND_WALL_SECONDS
from flsplit.runtime.memory import peak_rss_mib
from flsplit.server.atomic import write_json_atomically
from strategies.split import SplitStrategy

HISTORY = "history.json"
#: history.json's per-round metric tables (the keys of ``SplitStrategy.results`` too)
TABLES = ("train", "evaluate", "server")


def history_of(strategy: SplitStrategy) -> dict[str, Any]:
    """What ``history.json`` holds for the rounds ``strategy`` knows of.

    ``train``, ``evaluate`` and ``server``: the aggregated train metrics, the clients'
    evaluation and the server-side evaluation per round (as the run's ``Result`` has them,
    by flsplit's round); ``round-wall-seconds`` per round; the helpers' peak memory and
    synchronous step sizes; the parameter bytes of every split round (``sent``, of which
    ``sent-base``, ``received``); the data-plane bytes each client sent and received per
    round (``data-plane-bytes``: ``bytes-up``, ``bytes-down``); this process's peak
    memory; when it was written.
    """
    return {
        **{kind: dict(sorted(strategy.results[kind].items())) for kind in TABLES},
        ROUND_WALL_SECONDS: dict(sorted(strategy.round_times.items())),
        "helper-peak-rss-mib": strategy.helper_peak_mib,
        "sync-step-examples": strategy.sync_steps,
        "parameter-bytes": strategy.param_bytes,
        DATA_PLANE_BYTES: strategy.data_bytes,
        "serverapp-peak-rss-mib": peak_rss_mib(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_history(output_dir: str | Path, strategy: SplitStrategy) -> Path:
    """Replace ``output_dir/history.json`` with the history of ``strategy``, atomically.

    Parameters
    ----------
    output_dir : str or Path
        Directory to write ``history.json`` into (created if missing).
    strategy : SplitStrategy
        The run's strategy: metrics and times of every round so far, helpers' peak
        memory, synchronous steps.

    Returns
    -------
    Path
        The written file.
    """
    return write_json_atomically(Path(output_dir) / HISTORY, history_of(strategy))


def history_writer(
    output_dir: str | Path,
) -> Callable[[int, ArrayRecord, SplitStrategy], None]:
    """``on_round_end`` hook writing ``history.json`` after every round."""

    def write(server_round: int, arrays: ArrayRecord, strategy: SplitStrategy) -> None:
        write_history(output_dir, strategy)

    return write


def history_state(output_dir: str | Path, up_to: int) -> dict[str, Any]:
    """The rounds up to ``up_to`` of ``output_dir/history.json``, as strategy state.

    What :meth:`SplitStrategy.load_state` takes (``results``, ``round_times``,
    ``helper_peak_mib``, ``sync_steps``); empty if there is no readable file. Rounds after
    ``up_to`` ran after the checkpoint was written: the resumed run runs them again.
    """
    path = Path(output_dir) / HISTORY
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log(WARNING, "%s cannot be read (%s): the history starts afresh", path, err)
        return {}
    if not isinstance(saved, dict):
        return {}

    def rounds(table: Any) -> dict[str, Any]:
        if not isinstance(table, Mapping):
            return {}
        return {r: v for r, v in table.items() if str(r).isdigit() and int(r) <= up_to}

    return {
        "results": {kind: rounds(saved.get(kind)) for kind in TABLES},
        "round_times": rounds(saved.get(ROUND_WALL_SECONDS)),
        "helper_peak_mib": dict(saved.get("helper-peak-rss-mib") or {}),
        "sync_steps": rounds(saved.get("sync-step-examples")),
        "data_bytes": rounds(saved.get(DATA_PLANE_BYTES)),
    }


def resumed_state(
    checkpoint_state: Mapping[str, Any], output_dir: str | Path, server_round: int
) -> dict[str, Any]:
    """The strategy state a run resumed after ``server_round`` starts from.

    The checkpoint's own state wins; what it lacks (a checkpoint written before
    checkpoints kept the rounds' metrics) comes from ``history.json`` in ``output_dir``,
    rounds up to ``server_round`` only.
    """
    from_history = history_state(output_dir, server_round) if output_dir else {}
    return {**from_history, **checkpoint_state}
