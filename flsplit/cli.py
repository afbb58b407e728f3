"""The ``flsplit`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _simulate(args: argparse.Namespace) -> int:
    from flsplit.simulation import (
        load_app_task,
        parse_run_config,
        read_app_config,
        simulate,
    )

    config = read_app_config(args.app)
    config.update(parse_run_config(args.run_config))
    simulate(
        load_app_task(args.app), config, num_supernodes=args.num_supernodes, verbose=args.verbose
    )
    return 0


def _compare_planners(args: argparse.Namespace) -> int:
    from benchmarks.compare_planners import compare
    from flsplit.simulation import parse_run_config

    compare(args.app, args.methods, parse_run_config(args.run_config), args.out_dir)
    return 0


def _bench_dataplane(args: argparse.Namespace) -> int:
    # Client and helper share this machine's cores. OpenMP threads that spin while their
    # process waits on the other one steal the cores it computes on; passive waiting
    # lets each side have them. Set before torch loads OpenMP (the helper process
    # inherits it); both the in-process and the data-plane figures use the same policy.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from flsplit import bench

    return bench.main(
        args.models, args.batch, args.steps, args.warmup, args.threads, args.repeats
    )


def _bench_chain(args: argparse.Namespace) -> int:
    from flsplit.runtime import chain_bench

    return chain_bench.main(args.args)


def _profile(args: argparse.Namespace) -> int:
    import json

    import torch

    from flsplit.model.profile import profile_model, write_profile
    from flsplit.model.zoo import build_model

    shape = [int(d) for d in args.input.split(",")]
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=shape[0])
    profile = profile_model(
        model,
        torch.randn(args.batch, *shape),
        model_name=args.model,
        dataset=args.dataset,
        device_name=args.device_name,
        role=args.role,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    if args.out:
        print(f"wrote {write_profile(profile, args.out)}")
    else:
        print(json.dumps(profile, indent=1))
    return 0


def _register_runtime_commands(sub: argparse._SubParsersAction) -> None:
    profile = sub.add_parser(
        "profile", help="measure per-layer training costs here (shared profile JSON)"
    )
    profile.add_argument(
        "--model", default="resnet18", help="small-cnn, resnet18, resnet50, vgg11 or mobilenet_v2"
    )
    profile.add_argument("--batch", type=int, default=32)
    profile.add_argument("--input", default="3,32,32", help="input shape C,H,W")
    profile.add_argument("--dataset", default="cifar10", help="label written to the profile")
    profile.add_argument("--device-name", default="this-machine")
    profile.add_argument("--role", choices=("client", "helper"), default="client")
    profile.add_argument("--repeats", type=int, default=5)
    profile.add_argument("--warmup", type=int, default=2)
    profile.add_argument("--out", default="", help="JSON file (default: print)")
    profile.set_defaults(func=_profile)

    simulate = sub.add_parser(
        "simulate",
        help="run a flsplit Flower app in the simulation engine (no background SuperLink)",
    )
    simulate.add_argument("app", help="Flower app directory (holds pyproject.toml)")
    simulate.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="override [tool.flwr.app.config] values, as flwr run --run-config",
    )
    simulate.add_argument(
        "--num-supernodes",
        type=int,
        default=None,
        help="virtual nodes (default: num-helpers + num-clients)",
    )
    simulate.add_argument("--verbose", action="store_true", help="debug logging")
    simulate.set_defaults(func=_simulate)

    versus = sub.add_parser(
        "compare-planners",
        help="run an app once per planner method; print round time, prediction error, accuracy",
    )
    versus.add_argument("app", help="Flower app directory")
    versus.add_argument("--methods", nargs="+", default=["auto", "random-fcfs"])
    versus.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    versus.add_argument("--out-dir", default=None, help="where runs save rounds (default: temp)")
    versus.set_defaults(func=_compare_planners)

    bench = sub.add_parser(
        "bench-dataplane",
        help="per-batch step time over the gRPC data plane vs one process (JSON lines)",
    )
    bench.add_argument("--models", nargs="+", default=["small-cnn", "resnet18"])
    bench.add_argument("--batch", type=int, default=32)
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument(
        "--repeats", type=int, default=3, help="alternations of the two set-ups (default 3)"
    )
    bench.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: torch's default)",
    )
    bench.set_defaults(func=_bench_dataplane)

    chain = sub.add_parser(
        "bench-chain",
        help="helper chains: per-helper peak memory (VGG-19) and emulated epoch time by hops",
    )
    chain.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="options of python -m benchmarks.chain (--help lists them)",
    )
    chain.set_defaults(func=_bench_chain, passthrough=True)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="flsplit", description="Parallel split learning with helper nodes for Flower."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _register_runtime_commands(sub)
    from flsplit.plan import cli as plan_cli

    plan_cli.register(sub)
    from flsplit import sampling_experiment

    sampling_experiment.register(sub)
    from flsplit import sampling_compare

    sampling_compare.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flsplit`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "func", None) is not None and getattr(args, "passthrough", False):
        args.args = [*extra, *args.args]  # options of a wrapped command (bench-cuts)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
