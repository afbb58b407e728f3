"""Micro-batch size for a fixed placement.

For each stage ``j`` taken as the bottleneck, ``T_j(b) = const + (C - c_j) b + B a_j / b``
is minimal at ``b_j = sqrt(B a_j / (C - c_j))`` (``C`` = sum of ``c``); the integers
around every ``b_j`` (clipped to ``[1, B]``), 1 and ``B`` are evaluated exactly and the
best is improved by moving to a better integer neighbour while there is one (details in
:func:`best_micro_batch`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from flsplit.plan.multihop.evaluation import pipeline_latency
from flsplit.plan.multihop.problem import Stage


def best_micro_batch(stages: Sequence[Stage], batch_size: int, exact: bool = False
                     ) -> tuple[int, float]:
    """Micro-batch size for fixed stages: closed form per bottleneck, integer check.

    With stage ``j`` as the bottleneck and ``M = B / b`` taken as continuous,
    ``T_j(b) = const + (C - c_j) b + B a_j / b`` is smallest at
    ``b_j = sqrt(B a_j / (C - c_j))``; the continuous optimum is one of the ``b_j`` or a
    size where the bottleneck changes (two stage lines cross), or 1 or ``B``. Since
    ``M = ceil(B / b)`` is an integer and every stage time grows with ``b``, the best size
    for a given ``M`` is ``ceil(B / M)``; so every such point ``x`` gives the candidates
    ``floor(x)``, ``ceil(x)`` and ``ceil(B / M)`` for ``M`` around ``B / x``. The best
    candidate is then moved to a better neighbour (``b +- 1`` or the next ``M`` up or
    down) while there is one. The rounding of ``M`` can leave this a few percent above
    the best integer size; ``exact=True`` also tries every ``ceil(B / M)``,
    ``M = 1 .. B`` (at most ``2 sqrt(B)`` sizes), which finds it.

    Parameters
    ----------
    stages
        The placement's stages.
    batch_size
        ``B``.
    exact
        Also scan every distinct size ``ceil(B / M)``.

    Returns
    -------
    tuple
        ``(b, latency_ms)``.
    """
    big_b = batch_size

    def snap(b: float) -> set[int]:
        b = min(max(b, 1.0), float(big_b)) if math.isfinite(b) else float(big_b)
        out = set()
        for value in (math.floor(b), math.ceil(b)):
            value = min(max(int(value), 1), big_b)
            out.add(value)
            out.add(math.ceil(big_b / math.ceil(big_b / value)))
        return out

    def neighbours(b: int) -> list[int]:
        m = math.ceil(big_b / b)
        found = [b - 1, b + 1, math.ceil(big_b / (m + 1))]
        if m > 1:
            found.append(math.ceil(big_b / (m - 1)))
        return [x for x in found if 1 <= x <= big_b]

    serial = [s for s in stages if s.serial]  # once per batch: the size does not move it
    stages = [s for s in stages if not s.serial]
    big_c = sum(s.c for s in stages)
    candidates = {1, big_b}
    for stage in stages:
        slope = big_c - stage.c
        if stage.a <= 0:
            continue
        root = math.sqrt(big_b * stage.a / slope) if slope > 0 else float(big_b)
        candidates |= snap(root)
    for first, second in itertools.combinations(stages, 2):  # where the bottleneck changes
        if first.c != second.c:
            cross = (second.a - first.a) / (first.c - second.c)
            if 1 < cross < big_b:
                candidates |= snap(cross)
    if exact:
        candidates |= {math.ceil(big_b / m) for m in range(1, big_b + 1)}
    stages = [*stages, *serial]
    best_b = min(sorted(candidates), key=lambda b: pipeline_latency(stages, b, big_b))
    best_t = pipeline_latency(stages, best_b, big_b)
    while True:  # move to a better integer neighbour while there is one
        moved = False
        for b in neighbours(best_b):
            t = pipeline_latency(stages, b, big_b)
            if t < best_t - 1e-12:
                best_b, best_t, moved = b, t, True
        if not moved:
            return best_b, best_t
