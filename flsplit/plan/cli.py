"""``flsplit plan`` and ``flsplit gen-instance`` sub-commands."""

from __future__ import annotations

import argparse
import sys

from flsplit.plan.cuts.cli import add_cut_arguments, run_cut_plan
from flsplit.plan.generator import CUTS, generate_instance, random_instance
from flsplit.plan.instance import InstanceError, load_instance, save_instance, to_slotted
from flsplit.plan.scheduling.packing import PlanningError
from flsplit.plan.scheduling.solve import DEFAULT_TIME_LIMIT, METHODS, solve


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the planner sub-commands to the ``flsplit`` parser."""
    plan = subparsers.add_parser(
        "plan",
        help="plan one round for an instance JSON, or cuts too with --profiles and --nodes",
    )
    plan.add_argument("instance", nargs="?",
                      help="instance JSON file (see docs/planner.md); omit with --nodes")
    plan.add_argument("--method", choices=METHODS, default="auto")
    plan.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                      help="solver seconds (default %(default)s)")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--bound-time", type=float, default=0.0,
                      help="extra seconds for the assignment-relaxation lower bound")
    plan.add_argument("--out", help="write the plan JSON here")
    plan.add_argument("--gantt", help="write a Gantt chart PNG here")
    add_cut_arguments(plan)
    plan.add_argument("--multihop", metavar="MULTIHOP.json",
                      help="place one client's model on a chain of helpers and choose the "
                      "micro-batch size, or plan the chains of many clients sharing the "
                      "helpers (a 'clients' list; docs/multihop.md); --profiles replaces "
                      "its profile")
    plan.add_argument("--micro-batch", type=int,
                      help="with --multihop: fix the micro-batch size instead of choosing it")
    plan.set_defaults(func=run_plan)

    gen = subparsers.add_parser("gen-instance", help="write a generated instance JSON")
    gen.add_argument("out", help="output instance JSON")
    gen.add_argument("--model", choices=[*CUTS, "random"], default="resnet101")
    gen.add_argument("--clients", "-K", type=int, default=20)
    gen.add_argument("--helpers", "-H", type=int, default=5)
    gen.add_argument("--heterogeneity", choices=("low", "high"), default="low")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--slotted", action="store_true", help="published slotted form")
    gen.add_argument("--profiles", help="profile directory (default $FLSPLIT_PROFILES "
                     "or ../shared/profiles)")
    gen.set_defaults(func=run_gen_instance)


def _error(message: str) -> int:
    print(f"flsplit: error: {message}", file=sys.stderr)
    return 2


def run_plan(args: argparse.Namespace) -> int:
    """Solve an instance file and print a one-screen summary."""
    from flsplit.plan.evaluator import evaluate
    from flsplit.plan.plan import save_plan
    from flsplit.plan.scheduling.relaxation import relaxation_bound

    if getattr(args, "multihop", None):
        if args.instance or args.nodes:
            return _error("give --multihop alone, not with INSTANCE.json or --nodes")
        return run_multihop(args)
    if args.nodes:
        if args.instance:
            return _error("give either INSTANCE.json or --profiles and --nodes, not both")
        return run_cut_plan(args)
    if not args.instance:
        return _error("give INSTANCE.json, or --profiles MODEL.json --nodes NODES.json")
    try:
        instance = load_instance(args.instance)
    except FileNotFoundError:
        return _error(f"{args.instance}: no such file")
    except InstanceError as exc:
        return _error(f"invalid instance {args.instance}: {exc}")
    try:
        plan = solve(instance, args.method, time_limit=args.time_limit, seed=args.seed)
    except PlanningError as exc:
        return _error(f"no plan for {args.instance}: {exc}")
    if args.bound_time > 0 and not plan.proven_optimal:
        bound = relaxation_bound(instance, plan.makespan, args.bound_time,
                                 lower=plan.lower_bound)
        plan.lower_bound = max(plan.lower_bound or 0.0, bound)
        plan.proven_optimal = plan.makespan <= plan.lower_bound * (1 + 1e-9)
    gap = plan.gap
    print(f"instance     {instance.name or args.instance}: {instance.num_clients} clients, "
          f"{instance.num_helpers} helpers")
    print(f"method       {plan.method}" + (f" ({plan.info['winner']})"
                                          if "winner" in plan.info else ""))
    print(f"makespan     {plan.makespan:.3f} ms")
    print(f"lower bound  {plan.lower_bound:.3f} ms" if plan.lower_bound is not None
          else "lower bound  -")
    print(f"gap          {100 * gap:.2f} %" + ("  (optimal)" if plan.proven_optimal else "")
          if gap is not None else "gap          -")
    print(f"solve time   {plan.solve_time:.3f} s")
    counts = plan.clients_per_helper()
    shown = ", ".join(f"{h}: {n}" for h, n in list(counts.items())[:20])
    more = f", ... ({len(counts) - 20} more)" if len(counts) > 20 else ""
    print(f"clients/helper {shown}{more}")
    if args.out:
        save_plan(plan, args.out)
        print(f"plan written to {args.out}")
    if args.gantt:
        from flsplit.plan.gantt import gantt

        gantt(evaluate(instance, plan).timeline, args.gantt,
              title=f"{instance.name} - {plan.method} - makespan {plan.makespan:.1f} ms")
        print(f"Gantt chart written to {args.gantt}")
    return 0


def run_multihop(args: argparse.Namespace) -> int:
    """Solve a multi-hop instance and print the chain, cuts, micro-batch and latency."""
    import json

    from flsplit.plan.multihop import MultihopError, load_problem, optimize_placement
    from flsplit.plan.multihop import save_plan as save_multihop_plan
    from flsplit.plan.multihop.chain_files import is_chain_instance

    try:
        with open(args.multihop) as handle:
            many = is_chain_instance(json.load(handle))
    except FileNotFoundError:
        return _error(f"{args.multihop}: no such file")
    except json.JSONDecodeError as exc:
        return _error(f"invalid multi-hop instance {args.multihop}: not valid JSON ({exc})")
    if many:  # several clients sharing the helpers: the chain planner
        from flsplit.plan.multihop.chain_cli import run_chain_plan

        if args.micro_batch is not None:
            return _error("--micro-batch applies to a one-client instance only")
        try:
            run_chain_plan(args)
        except MultihopError as exc:
            return _error(f"invalid multi-hop instance {args.multihop}: {exc}")
        return 0
    try:
        problem = load_problem(args.multihop, profile=args.profiles)
        plan = optimize_placement(problem, micro_batch=args.micro_batch)
    except FileNotFoundError:
        return _error(f"{args.multihop}: no such file")
    except MultihopError as exc:
        return _error(f"invalid multi-hop instance {args.multihop}: {exc}")
    print(f"instance     {problem.name or args.multihop}: {problem.num_layers} layers, "
          f"{problem.num_helpers} candidate helpers, batch {problem.batch_size}")
    print(f"chain        {' -> '.join(plan.chain)}")
    for i, (node, start, stop) in enumerate(plan.ranges()):
        last = problem.num_layers if stop < 0 else stop
        what = ("head and tail " if i in (0, len(plan.chain) - 1) else "") + \
            f"{plan.memory_mib[node]:.1f} MiB"
        print(f"  {node:<12} layers {start + 1}..{last}  ({what})")
    print(f"micro-batch  {plan.micro_batch} ({plan.num_micro_batches} micro-batches)"
          + ("  (fixed)" if plan.info.get("fixed_micro_batch") else ""))
    print(f"latency      {plan.latency_ms:.3f} ms (bottleneck {plan.bottleneck[0]}: "
          f"{plan.bottleneck[1]:.3f} ms per micro-batch)")
    print(f"solve time   {plan.solve_time:.3f} s ({plan.iterations} shortest-path solves)")
    if args.out:
        save_multihop_plan(plan, args.out)
        print(f"plan written to {args.out}")
    return 0


def run_gen_instance(args: argparse.Namespace) -> int:
    """Generate an instance and write it as JSON."""
    try:
        if args.model == "random":
            instance = random_instance(args.clients, args.helpers, seed=args.seed)
        else:
            instance = generate_instance(args.model, args.clients, args.helpers,
                                         args.heterogeneity, seed=args.seed,
                                         profile_dir=args.profiles)
    except FileNotFoundError as exc:
        return _error(f"profile not found: {exc.filename} (use --profiles DIR)")
    except ValueError as exc:
        return _error(str(exc))
    if args.slotted:
        instance = to_slotted(instance)
    save_instance(instance, args.out)
    print(f"wrote {args.out}: {instance.name}")
    return 0
