"""Multi-client chain planner benchmark: makespan against the lower bound and baselines.

``python -m benchmarks.chain_planner`` builds random instances on the shared measured
profiles (ResNet-101 by default: 37 layers/blocks; ``--model vgg19``: 25): 20 clients
(Raspberry Pi 4 with probability 1/2, Jetson CPU, Jetson GPU: the client devices with
every layer profiled), 6 helpers (VM, laptop, Jetson GPU; the client keeps the trailing
layers some helper has no profile for, e.g. ResNet-101's last two), client
links drawn as in the testbed (30% 1-4, 42% 5-10, 28% 16-20 Mbit/s, 1-10 ms),
helper-helper links 100-1000 Mbit/s, batch 128. Helper memory is ``--memory`` (default
1.3) times the clients' body memory in total, split unevenly (0.6-1.4 of an equal
share), so no helper can hold the whole bodies of all the clients it would serve at an
equal split. Per instance it prints the planner's judged makespan, the lower bound, the
gap, the round-robin chains' and the best one-hop plan's makespans, how many clients got
a chain, and the planner's time. ``--first-seed N --seeds 1`` runs one instance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from flsplit.plan.multihop.chain_bound import lower_bound
from flsplit.plan.multihop.chain_files import chain_problem_from_dict
from flsplit.plan.multihop.chain_planner import DEFAULT_CHAIN_TIME_LIMIT, plan_chains
from flsplit.plan.multihop.chain_problem import ChainProblem

PROFILE_FILES = {"vgg19": "vgg19_cifar10.json", "resnet101": "resnet101_cifar10.json"}
CLIENT_DEVICES = ("rpi4", "rpi4", "jetson-cpu", "jetson-gpu")
HELPER_DEVICES = ("vm-8vcpu", "laptop", "jetson-gpu")


def _profile_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("FLSPLIT_PROFILES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "profiles"


def _client_rate(rng: np.random.Generator) -> float:
    u = rng.random()
    low, high = (1, 4) if u < 0.30 else (5, 10) if u < 0.72 else (16, 20)
    return float(rng.uniform(low, high))


def chain_instance(profile_path: Path, clients: int = 20, helpers: int = 6, seed: int = 0,
                   memory: float = 1.3, batch_size: int = 128) -> ChainProblem:
    """The benchmark's instance (see the module docstring)."""
    rng = np.random.default_rng(seed)
    cids = [f"c{k + 1}" for k in range(clients)]
    hids = [f"h{v + 1}" for v in range(helpers)]
    links = [{"between": [c, h], "rate_mbps": _client_rate(rng),
              "latency_ms": float(rng.uniform(1, 10))} for c in cids for h in hids]
    for i in range(helpers):
        for j in range(i + 1, helpers):
            links.append({"between": [hids[i], hids[j]],
                          "rate_mbps": float(rng.uniform(100, 1000)),
                          "latency_ms": float(rng.uniform(0.1, 1.0))})
    raw = json.loads(profile_path.read_text())
    rows = [raw["devices"][d] for d in HELPER_DEVICES]
    layers = len(raw["layers"])
    tail = 1 + max((layers - 1 - i for i in range(layers) for r in rows
                    if r["forward_ms"][i] + r["backward_ms"][i] + r["update_ms"][i] == 0),
                   default=0)
    data = {
        "min_tail": tail,
        "format": "flsplit-multihop", "version": 1, "name": f"{profile_path.stem}-s{seed}",
        "profile": str(profile_path), "batch_size": batch_size,
        "clients": [{"id": c, "device": CLIENT_DEVICES[int(rng.integers(len(CLIENT_DEVICES)))],
                     "memory_mib": 4096, "overhead_ms": float(rng.uniform(1, 5))}
                    for c in cids],
        "helpers": [{"id": h, "device": HELPER_DEVICES[v % len(HELPER_DEVICES)],
                     "memory_mib": 1e9, "overhead_ms": float(rng.uniform(0.5, 3))}
                    for v, h in enumerate(hids)],
        "links": links,
    }
    problem = chain_problem_from_dict(data)
    p = problem.clients[0]
    body = float(p.layer_memory_mib[p.min_head:p.num_layers - p.min_tail].sum())
    share = rng.uniform(0.6, 1.4, helpers)
    helper_mem = memory * clients * body * share / share.sum()
    for q in problem.clients:
        q.memory_mib[1:] = helper_mem
    return problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(PROFILE_FILES), default="resnet101")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--helpers", type=int, default=6)
    parser.add_argument("--memory", type=float, default=1.3)
    parser.add_argument("--time-limit", type=float, default=DEFAULT_CHAIN_TIME_LIMIT)
    parser.add_argument("--profiles", help="profile directory (default $FLSPLIT_PROFILES "
                        "or ../shared/profiles)")
    args = parser.parse_args(argv)
    path = _profile_dir(args.profiles) / PROFILE_FILES[args.model]
    print(f"{args.model}: {args.clients} clients x {args.helpers} helpers, helper memory "
          f"{args.memory} x the bodies, time limit {args.time_limit} s")
    print(f"{'seed':>4} {'planner':>10} {'bound':>10} {'gap %':>7} {'round-robin':>12} "
          f"{'one-hop':>10} {'chained':>7} {'time s':>6}")
    gaps = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        problem = chain_instance(path, args.clients, args.helpers, seed, args.memory)
        start = time.perf_counter()
        plan = plan_chains(problem, time_limit=args.time_limit, seed=seed)
        elapsed = time.perf_counter() - start
        bound = lower_bound(problem).value
        gap = 100 * (plan.makespan / bound - 1)
        gaps.append(gap)
        rr = plan.info["round_robin_ms"]
        one = plan.info["one_hop_ms"]
        print(f"{seed:>4} {plan.makespan:>10.1f} {bound:>10.1f} {gap:>7.2f} "
              f"{'-' if rr is None else f'{rr:.1f}':>12} "
              f"{'-' if one is None else f'{one:.1f}':>10} "
              f"{plan.info['chained_clients']:>7} {elapsed:>6.2f}")
        assert rr is None or plan.makespan <= rr + 1e-6
        assert one is None or plan.makespan <= one + 1e-6
    print(f"gap: mean {statistics.mean(gaps):.2f} %, max {max(gaps):.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
