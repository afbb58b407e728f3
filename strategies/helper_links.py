"""Which helpers of a chain reach which, and over what emulated link.

A link between two helpers exists where every source that speaks of it allows it: run
config ``helper-links`` (index pairs; empty: all) and the node config ``helper-links`` of
each of the two helpers that declares one (the indices of the helpers it has a link with,
as it reported them at discovery: ``NodeReport.helper_links``). A helper that declares
none leaves its links to the run config. Planned chains (the chain planner) and
round-robin chains (:func:`strategies.assignment.round_robin_chains`) use only these.

With ``emulate`` and ``helper-link-mbps`` / ``helper-link-latency-ms`` an existing link
has the emulated rate and latency of :class:`~flsplit.runtime.emulation.HelperLinkTable`
(by helper index): the planner plans with it and the relaying helper emulates it, so both
see the same figures; otherwise it is free (rate 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flsplit.config import RunConfig
from flsplit.runtime.emulation import HelperLinkTable, helper_link_table
from strategies.discovery import NodeInfo


def helpers_linked(
    first: NodeInfo, second: NodeInfo, pairs: frozenset[tuple[int, int]] | None
) -> bool:
    """Whether helpers ``first`` and ``second`` have a link: ``pairs`` (run config
    ``helper-links`` as index pairs, both orders; ``None``: all) and each of the two that
    declares links allow it."""
    # helpers of one index (a deployment that sets no helper-index) are linked unless a
    # source says otherwise: run-config pairs never join an index to itself
    if pairs is not None and (first.index, second.index) not in pairs:
        return False
    for one, other in ((first, second), (second, first)):
        if one.helper_links is not None and other.index not in one.helper_links:
            return False
    return True


class HelperLinks:
    """``helper_link(a, b)`` by node id: the link's ``(rate Mbit/s, latency ms)`` (rate 0:
    free), or ``None`` (no link).

    Parameters
    ----------
    pairs : frozenset of (int, int), optional
        Run config ``helper-links`` as helper index pairs (``None``: every pair).
    table : HelperLinkTable, optional
        Emulated rates and latencies by helper index (``None``: free links).

    The node ids' indices and declared links are known only to the strategy once it has
    discovered the nodes: :meth:`bind` it before use.
    """

    def __init__(
        self,
        pairs: frozenset[tuple[int, int]] | None,
        table: HelperLinkTable | None = None,
    ) -> None:
        self.pairs = pairs
        self.table = table
        self.strategy: Any = None  # a SplitStrategy (its ``nodes``)

    @classmethod
    def from_config(cls, config: RunConfig | Mapping[str, Any] | None) -> HelperLinks:
        """The links of a run config (``helper-links``, and with ``emulate`` the
        ``helper-link-mbps`` / ``helper-link-latency-ms`` table)."""
        config = RunConfig.of(config)
        return cls(config.helper_links, helper_link_table(config))

    def bind(self, strategy: Any) -> None:
        """Look the nodes up in ``strategy.nodes`` from now on."""
        self.strategy = strategy

    def _nodes(self) -> Mapping[int, NodeInfo]:
        if self.strategy is None:
            raise RuntimeError("helper links are used before the strategy is bound")
        return self.strategy.nodes

    def linked(self, a: int, b: int) -> bool:
        """Whether helpers ``a`` and ``b`` (node ids) have a link."""
        nodes = self._nodes()
        return helpers_linked(nodes[a], nodes[b], self.pairs)

    def __call__(self, a: int, b: int) -> tuple[float, float] | None:
        if not self.linked(a, b):
            return None
        if self.table is None:
            return 0.0, 0.0
        nodes = self._nodes()
        return self.table(nodes[a].index, nodes[b].index)

    def describe(self, helpers: Sequence[int]) -> str:
        """The links among ``helpers`` (node ids) by helper index, ``"0-1, 1-2"``, or
        ``"none"``."""
        nodes = self._nodes()
        found = sorted(
            tuple(sorted((nodes[a].index, nodes[b].index)))
            for i, a in enumerate(helpers) for b in helpers[i + 1:] if self.linked(a, b)
        )
        return ", ".join(f"{a}-{b}" for a, b in found) or "none"
