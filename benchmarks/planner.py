"""Planner benchmark on the published scenario families.

For every (model, heterogeneity, K, H, seed) an instance is generated (optionally in the
published slotted form), every method is run, and each method's makespan is reported
relative to ``random-fcfs`` together with its gap to the best proven lower bound of the
instance (cheap bounds, solver bounds and the assignment relaxation given the best
makespan found) and its solve time. Results are averaged over seeds per cell.

Run ``python -m benchmarks.planner --profiles DIR`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from flsplit.plan.generator import CUTS, generate_instance, load_profile
from flsplit.plan.instance import Instance, to_slotted
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.relaxation import relaxation_bound
from flsplit.plan.scheduling.solve import DEFAULT_TIME_LIMIT, METHODS, solve

DEFAULT_KS: tuple[int, ...] = (20, 30, 50, 70, 100)
DEFAULT_HS: tuple[int, ...] = (5, 10)
DEFAULT_MODELS: tuple[str, ...] = ("resnet101", "vgg19")
DEFAULT_HETEROGENEITY: tuple[str, ...] = ("low", "high")
DEFAULT_METHODS: tuple[str, ...] = ("random-fcfs", "balanced-fcfs", "greedy", "auto")


@dataclass
class Result:
    """One method on one instance."""

    model: str
    heterogeneity: str
    form: str
    clients: int
    helpers: int
    seed: int
    method: str
    makespan: float
    vs_random: float
    bound: float
    gap: float
    vs_best: float
    solve_time: float


def run_instance(
    instance: Instance,
    methods: Sequence[str],
    time_limit: float,
    bound_time: float,
    seed: int,
) -> tuple[dict[str, Any], float, float]:
    """Run ``methods``; return ``(plans by method, best makespan, best bound)``."""
    plans = {m: solve(instance, m, time_limit=time_limit, seed=seed) for m in methods}
    if "random-fcfs" not in plans:
        plans["random-fcfs"] = solve(instance, "random-fcfs", seed=seed)
    best = min(p.makespan for p in plans.values())
    bound = max([lower_bound(instance)] + [p.lower_bound or 0.0 for p in plans.values()])
    if bound_time > 0 and bound < best * (1 - 1e-6):
        bound = max(bound, relaxation_bound(instance, best, bound_time, lower=bound))
    return plans, best, bound


def run_grid(
    models: Iterable[str] = DEFAULT_MODELS,
    heterogeneity: Iterable[str] = DEFAULT_HETEROGENEITY,
    clients: Iterable[int] = DEFAULT_KS,
    helpers: Iterable[int] = DEFAULT_HS,
    seeds: Iterable[int] = (0, 1, 2),
    methods: Sequence[str] = DEFAULT_METHODS,
    time_limit: float = 2.0,
    bound_time: float = 10.0,
    forms: Iterable[str] = ("ms",),
    profile_dir: str | Path | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run the benchmark grid and return one :class:`Result` per method and instance."""
    results: list[Result] = []
    profiles = {m: load_profile(m, profile_dir) for m in models}
    grid = itertools.product(profiles, heterogeneity, clients, helpers, seeds, forms)
    for model, het, num_clients, num_helpers, seed, form in grid:
        instance = generate_instance(model, num_clients, num_helpers, het, seed=seed,
                                     profile=profiles[model])
        if form == "slotted":
            instance = to_slotted(instance)
        plans, best, bound = run_instance(instance, methods, time_limit, bound_time, seed)
        random_makespan = plans["random-fcfs"].makespan
        for method in methods:
            plan = plans[method]
            result = Result(
                model=model, heterogeneity=het, form=form, clients=num_clients,
                helpers=num_helpers, seed=seed, method=method, makespan=plan.makespan,
                vs_random=plan.makespan / random_makespan, bound=bound,
                gap=(plan.makespan - bound) / plan.makespan, vs_best=plan.makespan / best - 1,
                solve_time=plan.solve_time,
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def format_table(results: Sequence[Result]) -> str:
    """Mean over seeds per cell: makespan / random-fcfs, gap to bound, solve time (s)."""
    methods = list(dict.fromkeys(r.method for r in results))
    cells = list(dict.fromkeys((r.model, r.heterogeneity, r.form, r.clients, r.helpers)
                               for r in results))
    head = f"{'model':9} {'het':4} {'form':7} {'K':>4} {'H':>3} |"
    head += "".join(f" {m[:13]:>13} {'gap':>6} {'s':>5} |" for m in methods)
    lines = [
        "ratio = makespan / random-fcfs makespan; gap = (makespan - bound) / makespan; "
        "s = solve seconds (means over seeds)",
        head,
        "-" * len(head),
    ]
    summary: dict[str, list[Result]] = {m: [] for m in methods}
    for cell in cells:
        row = f"{cell[0]:9} {cell[1]:4} {cell[2]:7} {cell[3]:>4} {cell[4]:>3} |"
        for m in methods:
            chosen = [r for r in results if (r.model, r.heterogeneity, r.form, r.clients,
                                             r.helpers) == cell and r.method == m]
            summary[m].extend(chosen)
            row += (f" {np.mean([r.vs_random for r in chosen]):13.3f}"
                    f" {100 * np.mean([r.gap for r in chosen]):5.1f}%"
                    f" {np.mean([r.solve_time for r in chosen]):5.2f} |")
        lines.append(row)
    lines.append("-" * len(head))
    row = f"{'mean':9} {'':4} {'':7} {'':>4} {'':>3} |"
    for m in methods:
        chosen = summary[m]
        row += (f" {np.mean([r.vs_random for r in chosen]):13.3f}"
                f" {100 * np.mean([r.gap for r in chosen]):5.1f}%"
                f" {np.mean([r.solve_time for r in chosen]):5.2f} |")
    lines.append(row)
    for m in methods:
        chosen = summary[m]
        lines.append(
            f"{m}: mean {100 * np.mean([r.vs_best for r in chosen]):.2f}% above the best "
            f"plan found per instance, worst {100 * max(r.vs_best for r in chosen):.2f}%; "
            f"worse than random-fcfs on {sum(r.vs_random > 1 + 1e-9 for r in chosen)}"
            f"/{len(chosen)} instances"
        )
    return "\n".join(lines)


def jsonl_writer(stream: TextIO) -> Callable[[Result], None]:
    """Callback writing each result as one JSON line to ``stream``."""

    def write(result: Result) -> None:
        stream.write(json.dumps(asdict(result)) + "\n")
        stream.flush()

    return write


def time_large(
    num_clients: int = 1000,
    num_helpers: int = 50,
    model: str = "resnet101",
    heterogeneity: str = "low",
    seed: int = 0,
    time_limit: float = 4.0,
    profile_dir: str | Path | None = None,
) -> dict[str, float]:
    """Plan one large instance with ``auto`` and the baselines; return timings."""
    instance = generate_instance(model, num_clients, num_helpers, heterogeneity, seed=seed,
                                 profile_dir=profile_dir)
    start = time.perf_counter()
    plan = solve(instance, "auto", time_limit=time_limit, seed=seed)
    wall = time.perf_counter() - start
    balanced = solve(instance, "balanced-fcfs", seed=seed)
    rand = solve(instance, "random-fcfs", seed=seed)
    return {
        "clients": num_clients,
        "helpers": num_helpers,
        "auto_makespan": plan.makespan,
        "auto_wall_s": wall,
        "balanced_makespan": balanced.makespan,
        "random_makespan": rand.makespan,
        "bound": plan.lower_bound or 0.0,
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.planner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet101", "vgg19"],
                        choices=list(CUTS))
    parser.add_argument("--heterogeneity", nargs="+", default=["low", "high"],
                        choices=("low", "high"))
    parser.add_argument("-K", "--clients", nargs="+", type=int, default=[20, 30, 50, 70, 100])
    parser.add_argument("-H", "--helpers", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        default=["random-fcfs", "balanced-fcfs", "greedy", "auto"])
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                        help="seconds per method and instance (default %(default)s)")
    parser.add_argument("--bound-time", type=float, default=10.0,
                        help="seconds for the relaxation bound per instance (0: cheap only)")
    parser.add_argument("--forms", nargs="+", default=["ms"], choices=("ms", "slotted"))
    parser.add_argument("--profiles", help="profile directory")
    parser.add_argument("--jsonl", help="also write one JSON line per result to this file")
    parser.add_argument("--large", action="store_true",
                        help="also time auto on K=1000, H=50 against the baselines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark grid and print the table (and JSON lines if asked).

    Parameters
    ----------
    argv
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0, or 2 if a profile is missing.
    """
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(Path(args.jsonl).open("w")) if args.jsonl else None
        try:
            results = run_grid(
                models=args.models, heterogeneity=args.heterogeneity, clients=args.clients,
                helpers=args.helpers, seeds=args.seeds, methods=args.methods,
                time_limit=args.time_limit, bound_time=args.bound_time, forms=args.forms,
                profile_dir=args.profiles,
                on_result=jsonl_writer(stream) if stream else None,
            )
        except FileNotFoundError as exc:
            print(f"error: profile not found: {exc.filename} (use --profiles DIR)",
                  file=sys.stderr)
            return 2
    print(format_table(results))
    if args.large:
        timing = time_large(profile_dir=args.profiles)
        print("large: " + json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
