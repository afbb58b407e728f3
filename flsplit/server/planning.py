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

from flsplit.config import RunConfig
from flsplit.model.costs import CutCosts, cut_costs, part_costs
from flsplit.model.frozen import frozen_keys
from flsplit.model.splitting import parse_cuts, part_state_keys
from flsplit.runtime.emulation import LinkTable
from flsplit.server.round_planner import FIXED_CUT_METHODS, RoundPlanner
from flsplit.task import SplitTask
from strategies.helper_links import HelperLinks
from strategies.planned import PlannedSplitStrategy
from strategies.split import SplitStrategy

__all__ = ["HelperLinks", "emulated_links", "planned_strategy"]


class _NodeLinks:
    """``link(client, helper)`` by node id, through the link table of the nodes' indices.

    The planner needs the link function before the strategy exists, but the node ids'
    indices are known only to the strategy; :meth:`bind` closes that loop.
    """

    def __init__(self, table: LinkTable | None) -> None:
        self.table = table
        self.strategy: SplitStrategy | None = None

    def bind(self, strategy: SplitStrategy) -> None:
        """Look the nodes' indices up in ``strategy`` from now on."""
        self.strategy = strategy

    def __call__(self, client: int, helper: int) -> tuple[float, float]:
        if self.table is None:
            return 0.0, 0.0
        if self.strategy is None:
            raise RuntimeError("node links are used before the strategy is bound")
        nodes = self.strategy.nodes
        return self.table(nodes[client].index, nodes[helper].index)


def emulated_links(config: RunConfig) -> _NodeLinks | None:
    """The emulated client-helper links of an unplanned split run (``emulate``), to
    :meth:`~_NodeLinks.bind` to its strategy; ``None`` without emulation."""
    if not config.emulate:
        return None
    return _NodeLinks(LinkTable(config.link_mbps, config.link_latency_ms, seed=config.seed))


def planned_strategy(
    task: SplitTask,
    config: RunConfig,
    split: Any,
    model: Any,
    common: Mapping[str, Any],
) -> PlannedSplitStrategy:
    """A split strategy planned every round by the run config's ``planner``.

    Parameters
    ----------
    task : SplitTask
        Model, example input.
    config : RunConfig
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
    if config.emulate:
        table = LinkTable(config.link_mbps, config.link_latency_ms, seed=config.seed)
    link = _NodeLinks(table)
    method = config.planner
    values = config.as_dict()
    if config.planned_chains:
        return _chain_planned_strategy(task, config, split, model, common, link)
    segments = _segment_costs(task, config, split, method)
    costs = segments.part_costs(segments.default) if segments else part_costs(task, values, split)
    log(INFO, "part costs on this machine (one batch): %s", costs)
    planner = RoundPlanner(
        costs,
        link,
        method=method,
        time_limit=config.planner_time_limit,
        seed=config.seed,
        cut_costs=segments,
        cut_method=config.cut_method,
        activations=config.compress_activations,
        gradients=config.compress_gradients,
    )
    strategy = PlannedSplitStrategy(
        lambda cuts: part_state_keys(model, parse_cuts(cuts), task.example_input(values)),
        ",".join(split.cuts),
        planner=planner,
        link=link if table is not None else None,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        output_dir=config.output_dir or None,
        gantt=config.gantt,
        frozen_keys=frozen_keys(model),
        **common,
    )
    link.bind(strategy)
    return strategy


def _chain_planned_strategy(
    task: SplitTask,
    config: RunConfig,
    split: Any,
    model: Any,
    common: Mapping[str, Any],
    link: _NodeLinks,
) -> PlannedSplitStrategy:
    """A split strategy whose helper chains the chain planner plans every round."""
    from flsplit.model.segment_costs import segment_costs
    from flsplit.server.chain_planning import ChainRoundPlanner
    from strategies.chain_planned import ChainPlannedSplitStrategy

    costs = segment_costs(task, config.as_dict())
    log(INFO, "planned helper chains (at most %s hops): %d segments, cuts %s",
        "any number of" if config.chain.auto else config.chain.length,
        costs.num_segments, ",".join(costs.boundaries))
    # one object for the planner and the strategy: the routes it plans and the links the
    # relaying helpers emulate come from the same figures
    helper_links = HelperLinks.from_config(config)
    planner = ChainRoundPlanner(
        costs,
        link,
        helper_link=helper_links,
        max_hops=config.chain.length,
        time_limit=config.planner_time_limit,
        seed=config.seed,
        activations=config.compress_activations,
        gradients=config.compress_gradients,
    )
    values = config.as_dict()
    strategy = ChainPlannedSplitStrategy(
        lambda cuts: part_state_keys(model, parse_cuts(cuts), task.example_input(values)),
        ",".join(split.cuts),
        planner=planner,
        link=link if link.table is not None else None,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        output_dir=config.output_dir or None,
        gantt=config.gantt,
        frozen_keys=frozen_keys(model),
        helper_links=helper_links,
        **common,
    )
    link.bind(strategy)
    return strategy


def _segment_costs(
    task: SplitTask, config: RunConfig, split: Any, method: str
) -> CutCosts | None:
    """Per-segment costs when the planner chooses among candidate cut pairs."""
    if not config.cut_candidates:
        return None
    if method in FIXED_CUT_METHODS:
        log(
            INFO,
            "planner %s is a baseline: every client keeps cuts %s",
            method,
            ",".join(split.cuts),
        )
        return None
    segments = cut_costs(task, config.as_dict(), split)
    log(
        INFO,
        "cut candidates: %s (%d segments profiled on this machine)",
        "; ".join(segments.candidates),
        segments.num_segments,
    )
    return segments
