"""The ``flsplit`` command line: ``simulate``, ``status``, ``plan``, ``gen-instance`` and
``profile``.

Benchmarks and experiments are not part of it: they run from a checkout as
``python -m benchmarks.NAME`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _simulate(args: argparse.Namespace) -> int:
    from flsplit.launch import simulate_app

    try:
        return simulate_app(
            args.app, args.run_config, num_supernodes=args.num_supernodes, verbose=args.verbose
        )
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"flsplit simulate: {err}", file=sys.stderr)
        return 2


def _status(args: argparse.Namespace) -> int:
    from flsplit.server.status import describe, exit_code, read_status

    try:
        status = read_status(args.output_dir)
    except (OSError, ValueError) as err:
        print(f"flsplit status: cannot read the status in {args.output_dir}: {err}",
              file=sys.stderr)
        return 2
    print(describe(status))
    return exit_code(status)


def _profile(args: argparse.Namespace) -> int:
    import json

    import torch

    from flsplit.model.profile import profile_model, write_profile
    from flsplit.model.zoo import build_model

    torch.manual_seed(0)
    if args.app:
        model, example, name = _app_model(args.app, args.batch)
    else:
        shape = [int(d) for d in args.input.split(",")]
        model = build_model(args.model, in_channels=shape[0])
        example, name = torch.randn(args.batch, *shape), args.model
    profile = profile_model(
        model,
        example,
        model_name=name,
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


def _app_model(app_dir: str, batch: int) -> tuple:
    """A Flower app's model (its ``SplitTask``'s, with the app's run config) and a batch
    of ``batch`` inputs like its example input; the app's name."""
    from flsplit.launch import load_split_app
    from flsplit.task import batch_like

    app = load_split_app(app_dir)
    config = app.settings().as_dict()
    task = app.split.task
    return task.model_fn(config), batch_like(task.example_input(config), batch), app.path.name


def _register_runtime_commands(sub: argparse._SubParsersAction) -> None:
    profile = sub.add_parser(
        "profile", help="measure per-layer training costs here (shared profile JSON)"
    )
    profile.add_argument(
        "--model", default="resnet18", help="small-cnn, resnet18, resnet50, vgg11 or mobilenet_v2"
    )
    profile.add_argument(
        "--app", default="", help="a Flower app directory: profile its SplitTask's model "
        "(with the app's run config) instead of --model"
    )
    profile.add_argument("--batch", type=int, default=32)
    profile.add_argument("--input", default="3,32,32", help="input shape C,H,W (--model)")
    profile.add_argument("--dataset", default="cifar10", help="label written to the profile")
    profile.add_argument("--device-name", default="this-machine")
    profile.add_argument("--role", choices=("client", "helper"), default="client")
    profile.add_argument("--repeats", type=int, default=5)
    profile.add_argument("--warmup", type=int, default=2)
    profile.add_argument("--out", default="", help="JSON file (default: print)")
    profile.set_defaults(func=_profile)

    simulate = sub.add_parser(
        "simulate",
        help="run a Flower app whose ClientApp calls enable_split_learning with flwr run, "
        "on a local simulation SuperLink of its own (stopped at the end)",
        description="Runs the app's own ServerApp and ClientApp with `flwr run APP --stream` "
        "on a local simulation SuperLink started for the run (a temporary FLWR_HOME, a free "
        "port) and stopped when it ends: num-helpers + num-clients virtual nodes, with Ray "
        "CPUs so that every helper and a client run at once. Exit code 0 only if the run "
        "completed.",
    )
    simulate.add_argument("app", help="Flower app directory (holds pyproject.toml)")
    simulate.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="override [tool.flwr.app.config] values, passed to flwr run --run-config",
    )
    simulate.add_argument(
        "--num-supernodes",
        type=int,
        default=None,
        help="virtual nodes (default: num-helpers + num-clients)",
    )
    simulate.add_argument(
        "--verbose", action="store_true", help="debug logging of the simulation engine"
    )
    simulate.set_defaults(func=_simulate)

    status = sub.add_parser(
        "status",
        help="how a run went: the status.json its ServerApp wrote in output-dir",
        description="Prints one line from the status.json that flsplit's ServerApp keeps in "
        "the run config's output-dir (running, completed or failed, the last round, the "
        "error). `flwr run --stream` exits 0 even when the ServerApp raised; this exits 0 "
        "only if the run completed, 1 if it failed, 2 if there is no status, 3 if it is "
        "still running (or its ServerApp was killed).",
    )
    status.add_argument("output_dir", help="the run's output-dir (or its status.json)")
    status.set_defaults(func=_status)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="flsplit", description="Parallel split learning with helper nodes for Flower."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _register_runtime_commands(sub)
    from flsplit.plan import cli as plan_cli

    plan_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flsplit`` console script."""
    from flsplit.plan import PlanningError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PlanningError as err:  # a planner that finds no plan is an answer, not a crash
        print(f"flsplit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
