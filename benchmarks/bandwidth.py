"""Benchmark: shared helper links, planned shares against a link-unaware planner.

On the planner benchmark's families (:func:`flsplit.plan.cuts.family.family_problem`,
high heterogeneity) every helper gets a link of ``factor`` times the median client rate,
shared by the clients it serves. For each model, seed and factor it prints the makespan
of a planner that ignores the shared links and then shares them equally
(:func:`flsplit.plan.cuts.links.unaware_plan`), the makespan of
:func:`flsplit.plan.cuts.links.plan_shared_links` and the gain of the latter.

Run ``python -m benchmarks.bandwidth --profiles DIR`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from flsplit.plan.cuts.family import family_problem
from flsplit.plan.cuts.links import plan_shared_links, unaware_plan
from flsplit.plan.generator import load_profile


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bandwidth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", required=True, help="directory of the model profiles")
    parser.add_argument("--models", nargs="+", default=["resnet101", "vgg19"])
    parser.add_argument("-K", type=int, default=20, help="clients")
    parser.add_argument("-H", type=int, default=5, help="helpers")
    parser.add_argument("--link-factors", type=float, nargs="+", default=[1.0, 2.0],
                        help="each helper's link as a multiple of the median client rate")
    parser.add_argument("--time-limit", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per model, seed and link factor; returns the exit code."""
    args = build_parser().parse_args(argv)
    print("model      K   H  link  seed  link-unaware ms  shares planned ms   gain")
    for model in args.models:
        profile = load_profile(model, args.profiles)
        for seed in args.seeds:
            base = family_problem(model, args.K, args.H, "high", seed, profile)
            for factor in args.link_factors:
                link = factor * float(np.median(base.rates_mbps))
                problem = replace(base, link_mbps=np.full(args.H, link))
                unaware = unaware_plan(problem, args.time_limit, seed).makespan
                shared = plan_shared_links(problem, time_limit=args.time_limit,
                                           seed=seed).makespan
                print(f"{model:<9} {args.K:>3} {args.H:>3} {factor:>5.1f} {seed:>5} "
                      f"{unaware:>16.0f} {shared:>18.0f} {100 * (1 - shared / unaware):>5.1f}%",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
