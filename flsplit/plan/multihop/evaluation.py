"""The judge of a placement: its pipeline stages, memory and latency.

:func:`evaluate_placement` is the single judge: every latency the solvers report is its
value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.multihop.problem import MultihopError, MultihopProblem, Stage


def _check_chain(problem: MultihopProblem, helpers: Sequence[int], cuts: Sequence[int]
                 ) -> None:
    layers, k = problem.num_layers, len(helpers)
    if k < 1 or len(cuts) != k + 1:
        raise MultihopError("placement", f"{k} helpers need {k + 1} cuts, got {len(cuts)}")
    if list(helpers) != sorted(set(helpers)) or helpers[0] < 1 or \
            helpers[-1] > problem.num_helpers:
        raise MultihopError("placement", f"helpers {list(helpers)} are not distinct "
                            "helper indices in route order")
    if not (problem.min_head <= cuts[0] and cuts[-1] <= layers - problem.min_tail
            and all(a < b for a, b in itertools.pairwise(cuts))):
        raise MultihopError("placement", f"cuts {list(cuts)} are not increasing within "
                            f"[{problem.min_head}, {layers - problem.min_tail}]")
    route = [0, *helpers] if problem.return_along and k >= 2 else [0, *helpers, 0]
    for u, w in itertools.pairwise(route):
        if problem.rate_mbps[u, w] <= 0:
            raise MultihopError("placement", f"no link {problem.node_ids[u]!r} - "
                                f"{problem.node_ids[w]!r}")


def placement_stages(problem: MultihopProblem, helpers: Sequence[int], cuts: Sequence[int]
                     ) -> tuple[list[Stage], dict[str, float]]:
    """Stages (affine per micro-batch) and per-node memory of a placement.

    Parameters
    ----------
    helpers
        Helper node indices (1-based, increasing).
    cuts
        ``len(helpers) + 1`` cut positions.

    Raises
    ------
    MultihopError
        ``placement`` when the chain is malformed, a link is missing, a node cannot run
        its layers or its memory is exceeded.
    """
    _check_chain(problem, helpers, cuts)
    layers = problem.num_layers
    c1, c2 = cuts[0], cuts[-1]
    ids = problem.node_ids
    per_kib = 2.0 * KIB_TO_MS_AT_1MBIT
    mem = problem.layer_memory_mib
    client_layers = np.r_[0:c1, c2:layers]
    call = problem.call_ms
    assert call is not None  # set in __post_init__
    # the head runs once per batch (its fixed time spread over the samples), the tail
    # and every helper's range once per micro-batch
    head_ms = float(problem.sample_ms[0, :c1].sum() * problem.batch_size + call[0, :c1].sum())
    if problem.serial_head:  # the head outside the pipeline: its batch time, once
        stages = [Stage(f"compute {ids[0]}", float(problem.overhead_ms[0] + call[0, c2:].sum()),
                        float(problem.sample_ms[0, c2:].sum()))]
    else:
        stages = [Stage(f"compute {ids[0]}",
                        float(problem.overhead_ms[0] + call[0, c2:].sum()),
                        float(problem.sample_ms[0, client_layers].sum()
                              + call[0, :c1].sum() / problem.batch_size))]
    memory = {ids[0]: float(mem[client_layers].sum())}
    for v, start, stop in zip(helpers, cuts[:-1], cuts[1:], strict=True):
        stages.append(Stage(f"compute {ids[v]}",
                            float(problem.overhead_ms[v] + call[v, start:stop].sum()),
                            float(problem.sample_ms[v, start:stop].sum())))
        memory[ids[v]] = float(mem[start:stop].sum())
    route = [0, *helpers, 0]
    carried: dict[tuple[int, int], list[int]] = {}
    if problem.return_along and len(helpers) >= 2:
        # every hop out carries its cut, and the last cut back along the chain
        for (u, w), cut in zip(itertools.pairwise([0, *helpers]), cuts, strict=False):
            carried[(u, w)] = [cut, c2]
    else:
        for (u, w), cut in zip(itertools.pairwise(route), cuts, strict=True):
            carried.setdefault((min(u, w), max(u, w)), []).append(cut)
    for (u, w), cut_list in carried.items():
        act = float(sum(problem.activation_kib[q - 1] for q in cut_list))
        link = Stage(f"link {ids[u]}-{ids[w]}",
                     2.0 * len(cut_list) * float(problem.latency_ms[u, w]),
                     per_kib * act / float(problem.link_rate_mbps[u, w]))
        if problem.duplex:  # each direction its own stage, half the link's time
            stages.append(Stage(f"{link.name} out", link.a / 2, link.c / 2))
            stages.append(Stage(f"{link.name} back", link.a / 2, link.c / 2))
        else:
            stages.append(link)
    if problem.serial_head:
        stages.append(Stage(f"head {ids[0]}", head_ms, 0.0, serial=True))
    owners = [(0, client_layers), *((v, np.arange(start, stop)) for v, start, stop
                                    in zip(helpers, cuts[:-1], cuts[1:], strict=True))]
    for v, rng in owners:
        if not problem.runnable[v, rng].all():
            raise MultihopError("placement", f"node {ids[v]!r} has no profile data for "
                                "some of its layers")
        if memory[ids[v]] > problem.memory_mib[v] + 1e-9:
            raise MultihopError("placement", f"node {ids[v]!r} needs {memory[ids[v]]:.1f} "
                                f"MiB, holds {problem.memory_mib[v]:g} MiB")
    return stages, memory


def pipeline_latency(stages: Sequence[Stage], micro_batch: int, batch_size: int) -> float:
    """``sum_s t_s(b) + (ceil(B / b) - 1) max_s t_s(b)`` (ms); a serial stage counts
    once, outside the maximum."""
    times = [s.time(micro_batch) for s in stages if not s.serial]
    serial = sum(s.a for s in stages if s.serial)
    return float(serial + sum(times)
                 + (math.ceil(batch_size / micro_batch) - 1) * max(times))


def evaluate_placement(problem: MultihopProblem, helpers: Sequence[int], cuts: Sequence[int],
                       micro_batch: int) -> float:
    """Pipeline latency (ms) of a placement at micro-batch size ``micro_batch``; raises
    :class:`MultihopError` for an infeasible placement (see :func:`placement_stages`)."""
    stages, _ = placement_stages(problem, helpers, cuts)
    return pipeline_latency(stages, micro_batch, problem.batch_size)
