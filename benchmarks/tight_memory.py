"""Planning under tight helper memory: how often each method finds a plan that fits.

``python -m benchmarks.tight_memory`` generates ``--instances`` random instances
(:func:`flsplit.plan.generator.tight_instance`: bodies 100 MiB x U[0.5, 1.5], helpers
holding in total only a slack drawn in ``--slack`` more than all bodies need, split in
random shares), decides for each whether the bodies pack at all (an exact CP-SAT bin
packing written here, independent of the planner's packer; memory values have three
decimals, so integer thousandths make it exact) and runs every method on it. It prints,
per method, how many instances got a plan that fits memory (checked independently of
the planner) against how many have a packing, how many plans exceed memory, how many
methods stopped with a ``PlanningError`` and how many with any other exception.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from ortools.sat.python import cp_model

from flsplit.plan import Instance, PlanningError, solve
from flsplit.plan.generator import tight_instance

METHODS = ("random-fcfs", "balanced-fcfs", "greedy", "decomposition", "exact", "auto")


def packing_exists(instance: Instance, time_limit: float = 60.0) -> bool | None:
    """Whether the bodies pack into the helpers (``None`` if CP-SAT timed out)."""
    need = [round(1000 * b) for b in instance.body_memory]
    cap = [round(1000 * c) for c in instance.helper_memory]
    model = cp_model.CpModel()
    x = [[model.NewBoolVar(f"x{k}_{h}") for h in range(len(cap))] for k in range(len(need))]
    for row in x:
        model.AddExactlyOne(row)
    for h, c in enumerate(cap):
        model.Add(sum(need[k] * x[k][h] for k in range(len(need))) <= c)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 2
    status = solver.Solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return True
    return False if status == cp_model.INFEASIBLE else None


def fits(instance: Instance, assignment: dict[str, str]) -> bool:
    """Every client assigned and no helper over its memory."""
    used = dict.fromkeys(instance.helper_ids, 0.0)
    for k, client in enumerate(instance.client_ids):
        used[assignment[client]] += instance.body_memory[k]
    return all(used[h] <= instance.helper_memory[j] + 1e-9
               for j, h in enumerate(instance.helper_ids))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", "-N", type=int, default=40)
    parser.add_argument("--clients", "-K", type=int, nargs=2, default=(10, 30),
                        metavar=("MIN", "MAX"), help="clients drawn uniformly in [MIN, MAX]")
    parser.add_argument("--helpers", "-H", type=int, nargs=2, default=(3, 6),
                        metavar=("MIN", "MAX"), help="helpers drawn uniformly in [MIN, MAX]")
    parser.add_argument("--slack", type=float, nargs=2, default=(0.01, 0.02),
                        metavar=("MIN", "MAX"), help="spare capacity share, uniform")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--time-limit", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    packable = undecided = 0
    counts = {m: {"fits": 0, "over": 0, "planning_error": 0, "other": 0, "seconds": 0.0}
              for m in args.methods}
    for i in range(args.instances):
        instance = tight_instance(int(rng.integers(args.clients[0], args.clients[1] + 1)),
                                  int(rng.integers(args.helpers[0], args.helpers[1] + 1)),
                                  seed=args.seed * 100_000 + i,
                                  slack=float(rng.uniform(*args.slack)))
        exists = packing_exists(instance)
        packable += exists is True
        undecided += exists is None
        for method in args.methods:
            start = time.perf_counter()
            try:
                plan = solve(instance, method, time_limit=args.time_limit, seed=i)
                counts[method]["fits" if fits(instance, plan.assignment) else "over"] += 1
            except PlanningError:
                counts[method]["planning_error"] += 1
            except Exception:  # a crash is what this benchmark counts
                counts[method]["other"] += 1
            counts[method]["seconds"] += time.perf_counter() - start
    print(f"{args.instances} instances, K in {list(args.clients)}, H in {list(args.helpers)}, "
          f"slack in {list(args.slack)}, time limit {args.time_limit:g} s: "
          f"{packable} have a packing (exact CP-SAT), {undecided} undecided")
    print(f"{'method':<14} {'plan fits':>9} {'packable':>8} {'PlanningError':>13} "
          f"{'over memory':>11} {'crash':>5} {'mean s':>7}")
    for method, c in counts.items():
        print(f"{method:<14} {c['fits']:>9} {packable:>8} {c['planning_error']:>13} "
              f"{c['over']:>11} {c['other']:>5} {c['seconds'] / args.instances:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
