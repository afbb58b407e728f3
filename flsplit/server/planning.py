"""Building the split strategy whose every round a planner plans (run config ``planner``).

The planner starts from the model's costs as the server measures them
(:mod:`flsplit.model.costs`): the parts at the default cuts, or every segment of the
candidate cut pairs (``cut-candidates``) when the planner chooses cuts. With emulated
links (``emulate``) it plans with the link table the clients emulate.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.supercore import log

from flsplit.model.costs import CutCosts, cut_costs, part_costs
from flsplit.model.split import part_state_keys
from flsplit.runtime.emulation import DEFAULT_LINK_MIX, LinkTable
from flsplit.server.round_planner import FIXED_CUT_METHODS, RoundPlanner
from flsplit.task import SplitTask, parse_cuts
from strategies.planned import PlannedSplitStrategy


class _NodeLinks:
    """``link(client, helper)`` by node id, through the link table of the nodes' indices.

    The planner needs the link function before the strategy exists, but the node ids'
    indices are known only to the strategy; :meth:`bind` closes that loop.
    """

    def __init__(self, table: LinkTable | None) -> None:
        self.table = table
        self.strategy: PlannedSplitStrategy | None = None

    def bind(self, strategy: PlannedSplitStrategy) -> None:
        """Look the nodes' indices up in ``strategy`` from now on."""
        self.strategy = strategy

    def __call__(self, client: int, helper: int) -> tuple[float, float]:
        if self.table is None:
            return 0.0, 0.0
        if self.strategy is None:
            raise RuntimeError("node links are used before the strategy is bound")
        nodes = self.strategy.nodes
        return self.table(int(nodes[client].info["index"]), int(nodes[helper].info["index"]))


def planned_strategy(
    task: SplitTask,
    config: Mapping[str, Any],
    split: Any,
    model: Any,
    common: Mapping[str, Any],
) -> PlannedSplitStrategy:
    """A split strategy planned every round by ``config["planner"]``.

    Parameters
    ----------
    task : SplitTask
        Model, example input.
    config : Mapping
        Run config (``planner``, ``planner-time-limit``, ``cut-candidates``,
        ``cut-method``, ``emulate``, link settings, ...).
    split : SplitModel
        The model split at the default cuts.
    model : torch.nn.Module
        The full model (for the state keys of each part at any cut pair).
    common : Mapping
        Keyword arguments of :class:`~strategies.split.SplitStrategy`.

    Returns
    -------
    PlannedSplitStrategy
        With a :class:`~flsplit.server.round_planner.RoundPlanner` seeded with the
        costs measured on this machine.
    """
    table: LinkTable | None = None
    if config.get("emulate"):
        table = LinkTable(
            config.get("link-mbps", DEFAULT_LINK_MIX),
            float(config.get("link-latency-ms", 0.0)),
            seed=int(config.get("seed", 0)),
        )
    link = _NodeLinks(table)
    method = str(config["planner"])
    segments = _segment_costs(task, config, split, method)
    costs = segments.part_costs(segments.default) if segments else part_costs(task, config, split)
    log(INFO, "part costs on this machine (one batch): %s", costs)
    planner = RoundPlanner(
        costs,
        link,
        method=method,
        time_limit=float(config["planner-time-limit"]),
        seed=int(config.get("seed", 0)),
        cut_costs=segments,
        cut_method=str(config.get("cut-method", "auto")),
    )
    strategy = PlannedSplitStrategy(
        lambda cuts: part_state_keys(model, parse_cuts(cuts), task.example_input(config)),
        ",".join(split.cuts),
        planner=planner,
        link=link if table is not None else None,
        batch_size=int(config["batch-size"]),
        local_epochs=int(config["local-epochs"]),
        output_dir=str(config.get("output-dir", "")) or None,
        gantt=bool(config.get("gantt", False)),
        **common,
    )
    link.bind(strategy)
    return strategy


def _segment_costs(
    task: SplitTask, config: Mapping[str, Any], split: Any, method: str
) -> CutCosts | None:
    """Per-segment costs when the planner chooses among candidate cut pairs."""
    if not str(config.get("cut-candidates", "")).strip():
        return None
    if method in FIXED_CUT_METHODS:
        log(
            INFO,
            "planner %s is a baseline: every client keeps cuts %s",
            method,
            ",".join(split.cuts),
        )
        return None
    segments = cut_costs(task, config, split)
    log(
        INFO,
        "cut candidates: %s (%d segments profiled on this machine)",
        "; ".join(segments.candidates),
        segments.num_segments,
    )
    return segments
