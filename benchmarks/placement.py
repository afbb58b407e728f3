"""Placement benchmark: solve time of the multi-hop placement optimizer.

``python -m benchmarks.placement`` prints

1. a brute-force check: :func:`~flsplit.plan.multihop.placement.place` against enumeration of every
   chain on random small instances (how many agree);
2. solve times on synthetic 40-layer models with 5 candidate helpers (all helper-helper
   links, and a line where only consecutive helpers are linked), batch 128, for the full
   optimizer (placement and micro-batch size alternated) and for a fixed micro-batch;
3. the shared VGG-19 and ResNet-101 profiles: a Raspberry Pi 4 client and 5 helpers
   (laptop, VM, Jetson GPU, laptop, VM; 1-3 GiB each), client links 5-20 Mbit/s,
   helper-helper links 100-1000 Mbit/s; the plan found, its solve time and its latency
   against the best single-helper (one hop) placement of the same micro-batch size.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flsplit.plan.multihop import (
    MultihopError,
    MultihopProblem,
    brute_force,
    optimize_placement,
    place,
    problem_from_dict,
    random_problem,
)

PROFILE_FILES = {"vgg19": "vgg19_cifar10.json", "resnet101": "resnet101_cifar10.json"}
HELPER_DEVICES = ("laptop", "vm-8vcpu", "jetson-gpu", "laptop", "vm-8vcpu")


def profile_problem(profile_path: str | Path, num_helpers: int = 5, seed: int = 0,
                    batch_size: int = 128) -> MultihopProblem:
    """The benchmark's instance on a shared profile (see the module docstring)."""
    rng = np.random.default_rng(seed)
    helpers = [{"id": f"h{i + 1}", "device": HELPER_DEVICES[i % len(HELPER_DEVICES)],
                "memory_mib": int(rng.integers(1024, 3073)),
                "overhead_ms": float(rng.uniform(0.5, 3.0))} for i in range(num_helpers)]
    links = [{"between": ["pi", h["id"]], "rate_mbps": float(rng.uniform(5, 20)),
              "latency_ms": float(rng.uniform(1, 10))} for h in helpers]
    for i in range(num_helpers):
        for j in range(i + 1, num_helpers):
            links.append({"between": [f"h{i + 1}", f"h{j + 1}"],
                          "rate_mbps": float(rng.uniform(100, 1000)),
                          "latency_ms": float(rng.uniform(0.1, 1.0))})
    data = {
        "format": "flsplit-multihop", "version": 1, "profile": str(profile_path),
        "batch_size": batch_size,
        "client": {"id": "pi", "device": "rpi4", "memory_mib": 4096, "overhead_ms": 5.0},
        "helpers": helpers, "links": links,
    }
    return problem_from_dict(data)


def brute_force_check(count: int = 200, seed: int = 0) -> tuple[int, int]:
    """``(agreeing, total)`` of :func:`place` against :func:`brute_force`."""
    rng = np.random.default_rng(seed)
    agree = 0
    for i in range(count):
        problem = random_problem(int(rng.integers(3, 8)), int(rng.integers(1, 5)),
                                 seed=seed * 100_000 + i, batch_size=int(rng.integers(1, 64)),
                                 memory_slack=float(rng.uniform(0.3, 2.0)),
                                 link_probability=float(rng.uniform(0, 1)))
        micro = int(rng.integers(1, problem.batch_size + 1))
        expected = brute_force(problem, micro)
        try:
            got = place(problem, micro)[0]
        except MultihopError:
            agree += expected is None
            continue
        agree += expected is not None and math.isclose(got, expected[0], rel_tol=1e-9)
    return agree, count


def _time(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.placement",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the benchmark to ``parser``."""
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--helpers", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5, help="instances per setting")
    parser.add_argument("--brute-force", type=int, default=200,
                        help="small instances checked against enumeration (0: skip)")
    parser.add_argument("--profiles", help="profile directory (default $FLSPLIT_PROFILES "
                        "or ../shared/profiles)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its table."""
    from flsplit.plan.generator import default_profile_dir

    if args.brute_force > 0:
        agree, total = brute_force_check(args.brute_force)
        print(f"brute force: {agree}/{total} small instances equal")
    for topology, probability in (("all links", 1.0), ("line", 0.0)):
        full, fixed, hops = [], [], []
        for seed in range(args.seeds):
            problem = random_problem(args.layers, args.helpers, seed=seed, batch_size=128,
                                     link_probability=probability)
            seconds, plan = _time(lambda p=problem: optimize_placement(p))
            full.append(seconds)
            hops.append(len(plan.chain) - 2)
            fixed.append(_time(lambda p=problem: place(p, 8))[0])
        print(f"synthetic L={args.layers} H={args.helpers} ({topology}): full optimizer "
              f"mean {statistics.mean(full):.3f} s, max {max(full):.3f} s; fixed b=8 mean "
              f"{statistics.mean(fixed):.3f} s, max {max(fixed):.3f} s; helpers used {hops}")
    directory = Path(args.profiles) if args.profiles else default_profile_dir()
    for model, name in PROFILE_FILES.items():
        path = directory / name
        if not path.exists():
            print(f"{model}: profile {path} not found (use --profiles DIR)")
            continue
        problem = profile_problem(path, args.helpers)
        seconds, plan = _time(lambda p=problem: optimize_placement(p))
        one_hop = _one_hop(problem, plan.micro_batch)
        print(f"{model} L={problem.num_layers} H={problem.num_helpers}: {seconds:.3f} s; "
              f"chain {' -> '.join(plan.chain)} cuts {plan.cuts} b={plan.micro_batch} "
              f"M={plan.num_micro_batches} latency {plan.latency_ms:.0f} ms "
              f"(best one hop at that b: {one_hop:.0f} ms); bottleneck "
              f"{plan.bottleneck[0]} {plan.bottleneck[1]:.0f} ms")
    return 0


def _one_hop(problem: MultihopProblem, micro_batch: int) -> float:
    from flsplit.plan.multihop import single_hop, stage_tables

    found = single_hop(problem, stage_tables(problem, micro_batch), micro_batch)
    return found[0] if found is not None else math.inf


if __name__ == "__main__":
    raise SystemExit(main())
