"""``flsplit plan --profiles MODEL.json --nodes NODES.json``: cuts, assignment and order.

:mod:`flsplit.plan.cli` adds these options to ``flsplit plan`` and calls
:func:`run_cut_plan` when ``--nodes`` is given. ``run_cut_plan`` reads ``args.method``,
``args.time_limit``, ``args.seed``, ``args.out`` and ``args.gantt`` (the options
``flsplit plan`` already has). Standalone use:
``python -m flsplit.plan.cuts.cli --profiles MODEL.json --nodes NODES.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flsplit.plan.cuts.links import plan_shared_links
from flsplit.plan.cuts.nodes import load_nodes
from flsplit.plan.cuts.optimize import CUT_METHODS, CutPlan
from flsplit.plan.cuts.problem import load_layer_profile
from flsplit.plan.instance import InstanceError, save_instance
from flsplit.plan.scheduling.solution import PlanningError
from flsplit.plan.scheduling.solve import DEFAULT_TIME_LIMIT, METHODS


def add_cut_arguments(parser: argparse.ArgumentParser, standalone: bool = False) -> None:
    """Add the cut-planning options to ``parser``.

    Parameters
    ----------
    parser
        The ``flsplit plan`` parser (which already has ``--method``, ``--time-limit``,
        ``--seed``, ``--out`` and ``--gantt``).
    standalone
        Also add those shared options (for ``python -m flsplit.plan.cuts.cli``).
    """
    parser.add_argument("--profiles", metavar="MODEL.json",
                        help="layer profile of the model (format of shared/profiles/*.json)")
    parser.add_argument("--nodes", metavar="NODES.json",
                        help="clients, helpers, devices, memory and link rates "
                        "(docs/cuts.md); plans cut pairs jointly with assignment and order")
    parser.add_argument("--cut-method", choices=CUT_METHODS, default="auto",
                        help="cut optimizer (default %(default)s)")
    parser.add_argument("--instance-out", metavar="INSTANCE.json",
                        help="also write the planner instance of the chosen cuts")
    if standalone:
        parser.add_argument("--method", choices=METHODS, default="auto",
                            help="planner method for the final fixed-cut solve")
        parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                            help="seconds for the whole joint plan (default %(default)s)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", help="write the plan JSON here")
        parser.add_argument("--gantt", help="write a Gantt chart PNG here")


def _error(message: str) -> int:
    print(f"flsplit: error: {message}", file=sys.stderr)
    return 2


def format_summary(result: CutPlan, max_helpers: int = 20) -> str:
    """The one-screen summary plus one line per client with its cut pair and helper."""
    plan, instance = result.plan, result.instance
    gap = plan.gap
    lines = [
        f"instance     {instance.name or '-'}: {instance.num_clients} clients, "
        f"{instance.num_helpers} helpers, {len(set(result.cuts.values()))} distinct cut pairs",
        f"method       cuts-{result.method}"
        + (f" ({result.info['auto_choice']})" if "auto_choice" in result.info else ""),
        f"makespan     {plan.makespan:.3f} ms",
        f"lower bound  {plan.lower_bound:.3f} ms (joint)" if plan.lower_bound is not None
        else "lower bound  -",
        (f"gap          {100 * gap:.2f} %" + ("  (optimal)" if plan.proven_optimal else ""))
        if gap is not None else "gap          -",
        f"solve time   {plan.solve_time:.3f} s",
    ]
    counts = plan.clients_per_helper()
    shown = ", ".join(f"{h}: {n}" for h, n in list(counts.items())[:max_helpers])
    more = f", ... ({len(counts) - max_helpers} more)" if len(counts) > max_helpers else ""
    lines.append(f"clients/helper {shown}{more}")
    shares = result.info.get("shares")
    lines.append("cuts         client  cut1  cut2  helper" + ("  link share" if shares else ""))
    width = max(len(c) for c in result.cuts)
    for client, (c1, c2) in result.cuts.items():
        share = shares.get(client) if shares else None
        lines.append(f"             {client:<{max(6, width)}} {c1:>5} {c2:>5}  "
                     f"{plan.assignment[client]}"
                     + (f"  {100 * share:.1f} %" if share is not None else ""))
    return "\n".join(lines)


def run_cut_plan(args: argparse.Namespace) -> int:
    """Plan cuts, assignment and order for ``--profiles`` + ``--nodes``; print a summary."""
    from flsplit.plan.evaluator import evaluate
    from flsplit.plan.plan import save_plan

    if not args.profiles:
        return _error("--profiles MODEL.json is required with --nodes")
    try:
        profile = load_layer_profile(args.profiles)
    except FileNotFoundError:
        return _error(f"{args.profiles}: no such file")
    except ValueError as exc:
        return _error(f"invalid profile {args.profiles}: {exc}")
    try:
        problem = load_nodes(args.nodes, profile)
    except FileNotFoundError:
        return _error(f"{args.nodes}: no such file")
    except ValueError as exc:
        return _error(f"invalid nodes {args.nodes}: {exc}")
    try:
        result = plan_shared_links(problem, args.cut_method, time_limit=args.time_limit,
                                   seed=args.seed, solver=args.method)
    except (InstanceError, PlanningError) as exc:
        return _error(f"cannot plan {args.nodes}: {exc}")
    print(format_summary(result))
    if args.out:
        save_plan(result.plan, args.out)
        print(f"plan written to {args.out}")
    if getattr(args, "instance_out", None):
        save_instance(result.instance, args.instance_out)
        print(f"instance written to {args.instance_out}")
    if args.gantt:
        from flsplit.plan.gantt import gantt

        gantt(evaluate(result.instance, result.plan).timeline, args.gantt,
              title=f"{result.instance.name} - cuts-{result.method} - makespan "
              f"{result.plan.makespan:.1f} ms")
        print(f"Gantt chart written to {args.gantt}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m flsplit.plan.cuts.cli``)."""
    parser = argparse.ArgumentParser(prog="flsplit plan", description=__doc__.splitlines()[0])
    add_cut_arguments(parser, standalone=True)
    args = parser.parse_args(argv)
    if not args.nodes:
        parser.error("--nodes is required")
    return run_cut_plan(args)


if __name__ == "__main__":
    sys.exit(main())
