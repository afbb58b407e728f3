"""``flsplit plan --multihop`` on a multi-client instance (a ``clients`` list)."""

from __future__ import annotations

import argparse

from flsplit.plan.multihop.chain_bound import lower_bound
from flsplit.plan.multihop.chain_files import load_chain_problem, save_chain_plan
from flsplit.plan.multihop.chain_planner import plan_chains
from flsplit.plan.multihop.chain_problem import ChainProblem


def print_chain_plan(problem: ChainProblem, args: argparse.Namespace) -> None:
    """Plan, print the plan, its judged makespan, the lower bound and the gap; write the
    plan JSON with ``--out``. Raises :class:`MultihopError` on infeasible instances."""
    plan = plan_chains(problem, time_limit=args.time_limit, seed=args.seed)
    bound = lower_bound(problem)
    plan.lower_bound = bound.value
    hids = problem.helper_ids
    print(f"instance     {problem.name or args.multihop}: {problem.num_clients} clients, "
          f"{problem.num_helpers} helpers, {problem.clients[0].num_layers} layers")
    for k, route in enumerate(plan.routes):
        cid = problem.client_ids[k]
        hops = ", ".join(f"{hids[v - 1]} {a + 1}..{b}" for v, a, b in
                         zip(route.helpers, route.cuts[:-1], route.cuts[1:], strict=True))
        m = -(-problem.clients[k].batch_size // route.micro_batch)
        print(f"  {cid:<10} {hops}  (micro-batch {route.micro_batch} x {m})")
    rr, one = plan.info["round_robin_ms"], plan.info["one_hop_ms"]
    print(f"method       {plan.method} ({plan.info['chained_clients']} clients on chains)")
    print(f"makespan     {plan.makespan:.3f} ms")
    print(f"lower bound  {bound.value:.3f} ms (standalone {max(bound.standalone):.3f}, "
          f"helper load {bound.load:.3f})")
    print(f"gap          {100 * plan.gap:.2f} %")
    print("round-robin  " + ("-" if rr is None else f"{rr:.3f} ms"))
    print("one hop      " + ("-" if one is None else f"{one:.3f} ms"))
    print(f"solve time   {plan.solve_time:.3f} s")
    if args.out:
        save_chain_plan(plan, problem, args.out)
        print(f"plan written to {args.out}")


def run_chain_plan(args: argparse.Namespace) -> ChainProblem:
    """Load the instance (raises :class:`MultihopError`), then :func:`print_chain_plan`."""
    problem = load_chain_problem(args.multihop, profile=args.profiles)
    print_chain_plan(problem, args)
    return problem
