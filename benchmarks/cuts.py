"""Benchmark: joint per-client cuts vs the published and the best single fixed cuts.

For every (model, heterogeneity, K, H, seed) of the planner benchmark's families
(:mod:`flsplit.plan.cuts.family`: the same clients, helpers and links as
:func:`flsplit.plan.generator.generate_instance`) it plans

- ``published``: the published cuts (ResNet-101 3/33, VGG-19 3/23) for every client,
  planner ``auto``;
- ``single``: the best single cut pair for every client (pairs ranked by a lower bound,
  the best 8 planned with ``greedy``, the winner with ``auto``);
- each joint cut method (``integrated``, ``alternating``, ``auto``),

all with the same time limit and all judged by :func:`flsplit.plan.evaluate`. The table
gives, per cell (mean over seeds), each joint method's gain ``1 - joint / published`` and
``1 - joint / single`` (and the worst seed's gain over ``single``), planning times, and
the ceiling ``1 - joint lower bound / published`` that no plan can beat (the best of
:func:`~flsplit.plan.cuts.bounds.joint_bound` and the LP
:func:`~flsplit.plan.cuts.bounds.assignment_bound`).

Run ``python -m benchmarks.cuts [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flsplit.plan.cuts.bounds import assignment_bound
from flsplit.plan.cuts.family import family_problem
from flsplit.plan.cuts.optimize import best_single_pair, fixed_cut_plan, joint_bound, optimize_cuts
from flsplit.plan.generator import CUTS, load_profile

JOINT_METHODS: tuple[str, ...] = ("integrated", "alternating", "auto")
#: Targets of the issue.
TARGET_GAIN_HIGH = 0.20


@dataclass
class CutResult:
    """One instance: baseline and joint makespans (ms) and planning times (s)."""

    model: str
    heterogeneity: str
    clients: int
    helpers: int
    seed: int
    published: float
    single: float
    single_pair: list[int]
    joint: dict[str, float]
    joint_time: dict[str, float]
    distinct_pairs: dict[str, int]
    bound: float


def run_instance(model: str, heterogeneity: str, num_clients: int, num_helpers: int,
                 seed: int, profile: dict, time_limit: float,
                 methods: Sequence[str] = JOINT_METHODS) -> CutResult:
    """Plan one instance with the baselines and every joint method."""
    problem = family_problem(model, num_clients, num_helpers, heterogeneity, seed, profile)
    published = fixed_cut_plan(problem, CUTS[model], "auto", time_limit, seed)
    single = best_single_pair(problem, "auto", time_limit, seed)
    joint, times, distinct = {}, {}, {}
    for method in methods:
        start = time.perf_counter()
        result = optimize_cuts(problem, method, time_limit=time_limit, seed=seed)
        times[method] = time.perf_counter() - start
        joint[method] = result.makespan
        distinct[method] = len(set(result.cuts.values()))
    return CutResult(model, heterogeneity, num_clients, num_helpers, seed,
                     published.makespan, single.makespan, single.info["pair"], joint, times,
                     distinct, max(joint_bound(problem), assignment_bound(problem)))


def format_table(results: Sequence[CutResult]) -> str:
    """Per cell (mean over seeds) gains of each joint method and planning times."""
    methods = list(results[0].joint) if results else []
    cells = list(dict.fromkeys((r.model, r.heterogeneity, r.clients, r.helpers)
                               for r in results))
    head = f"{'model':9} {'het':4} {'K':>4} {'H':>3} {'single pair':>11} {'max':>6} |"
    head += "".join(f" {m[:11]:>11} {'vs pub':>7} {'vs single':>9} {'worst':>6} {'s':>5} |"
                    for m in methods)
    lines = [
        "vs pub = 1 - joint/published makespan, vs single = 1 - joint/best-single-pair "
        "makespan (means over seeds), worst = smallest per-seed gain vs single, "
        "s = mean planning seconds, max = 1 - joint lower bound/published (the largest "
        "gain any plan could reach)",
        head, "-" * len(head),
    ]
    for cell in cells:
        rows = [r for r in results if (r.model, r.heterogeneity, r.clients, r.helpers) == cell]
        pairs = sorted({tuple(r.single_pair) for r in rows})
        pair_text = ",".join(f"{a}/{b}" for a, b in pairs)[:11]
        ceiling = 100 * np.mean([1 - r.bound / r.published for r in rows])
        line = (f"{cell[0]:9} {cell[1]:4} {cell[2]:>4} {cell[3]:>3} {pair_text:>11}"
                f" {ceiling:5.1f}% |")
        for m in methods:
            vs_pub = [1 - r.joint[m] / r.published for r in rows]
            vs_single = [1 - r.joint[m] / r.single for r in rows]
            line += (f" {np.mean([r.joint[m] for r in rows]):11.0f}"
                     f" {100 * np.mean(vs_pub):6.1f}% {100 * np.mean(vs_single):8.1f}%"
                     f" {100 * min(vs_single):5.1f}%"
                     f" {np.mean([r.joint_time[m] for r in rows]):5.2f} |")
        lines.append(line)
    lines.append("-" * len(head))
    lines.extend(_verdicts(results, methods))
    return "\n".join(lines)


def _verdicts(results: Sequence[CutResult], methods: Sequence[str]) -> list[str]:
    lines = []
    cells = list(dict.fromkeys((r.model, r.heterogeneity, r.clients, r.helpers)
                               for r in results))
    for m in methods:
        high = [c for c in cells if c[1] == "high"]
        high_ok = sum(
            np.mean([1 - r.joint[m] / r.published for r in results
                     if (r.model, r.heterogeneity, r.clients, r.helpers) == c])
            >= TARGET_GAIN_HIGH for c in high)
        reachable = [c for c in high if np.mean(
            [1 - r.bound / r.published for r in results
             if (r.model, r.heterogeneity, r.clients, r.helpers) == c]) >= TARGET_GAIN_HIGH]
        longer_cells = sum(
            np.mean([r.joint[m] for r in results
                     if (r.model, r.heterogeneity, r.clients, r.helpers) == c])
            > np.mean([r.single for r in results
                       if (r.model, r.heterogeneity, r.clients, r.helpers) == c]) * (1 + 1e-9)
            for c in cells)
        longer_runs = sum(r.joint[m] > r.single * (1 + 1e-9) for r in results)
        big = [r.joint_time[m] for r in results if r.clients == 100 and r.helpers == 10]
        wins = sum(r.joint[m] <= min(r.joint.values()) * (1 + 1e-9) for r in results)
        lines.append(
            f"{m}: high-heterogeneity cells with >= {100 * TARGET_GAIN_HIGH:.0f}% gain vs "
            f"published {high_ok}/{len(high)} (the bound leaves {len(reachable)} cells able "
            f"to reach it); cells longer than the best single pair "
            f"{longer_cells}/{len(cells)} (instances {longer_runs}/{len(results)}); best "
            f"joint method on {wins}/{len(results)} instances"
            + (f"; K=100,H=10 planning {np.mean(big):.2f} s mean, {max(big):.2f} s max"
               if big else ""))
    return lines


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cuts",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CUTS), choices=list(CUTS))
    parser.add_argument("--heterogeneity", nargs="+", default=["low", "high"],
                        choices=("low", "high"))
    parser.add_argument("-K", "--clients", nargs="+", type=int, default=[20, 50, 100])
    parser.add_argument("-H", "--helpers", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=JOINT_METHODS,
                        default=list(JOINT_METHODS))
    parser.add_argument("--time-limit", type=float, default=2.0,
                        help="seconds per plan (baselines and each joint method)")
    parser.add_argument("--quick", action="store_true",
                        help="K in {20, 100}, H = 10, seed 0, methods auto only, 1 s limit "
                        "for K=20 (about 1.5 minutes)")
    parser.add_argument("--profiles", help="profile directory (default $FLSPLIT_PROFILES "
                        "or ../shared/profiles)")
    parser.add_argument("--jsonl", help="also write one JSON line per instance here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.clients, args.helpers, args.seeds = [20, 100], [10], [0]
        args.methods = ["auto"]
    try:
        profiles = {m: load_profile(m, args.profiles) for m in args.models}
    except FileNotFoundError as exc:
        print(f"error: profile not found: {exc.filename} (use --profiles DIR)",
              file=sys.stderr)
        return 2
    results = []
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(Path(args.jsonl).open("w")) if args.jsonl else None
        grid = itertools.product(args.models, args.heterogeneity, args.clients,
                                 args.helpers, args.seeds)
        for model, het, num_clients, num_helpers, seed in grid:
            limit = args.time_limit
            if args.quick and num_clients <= 20:
                limit = min(limit, 1.0)
            result = run_instance(model, het, num_clients, num_helpers, seed,
                                  profiles[model], limit, args.methods)
            results.append(result)
            if stream is not None:
                stream.write(json.dumps(asdict(result)) + "\n")
                stream.flush()
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
