"""``python -m benchmarks.sampling_compare APP``: one Flower app run per sampler, with and
without stragglers, accuracy per round and training time side by side.

Runs (``--runs``): ``local`` (each client its own batches of ``batch-size``),
``uniform`` and ``dirichlet`` (synchronous steps of ``global-batch-size``), each also
with stragglers (``+stragglers``: every ``1/fraction``-th client computes
``--straggler-factor`` times slower, through the run config's ``slowdown`` key). Global
sampling runs get as many steps per round as the local run takes (``sync-steps`` =
``ceil(largest client / batch-size) * local-epochs``), so accuracies compare at equal
numbers of steps. Training time is the sum of the rounds' wall times as the strategy
measures them (dispatch to aggregation, without start-up and evaluation). Each run is
``flsplit simulate APP`` with its settings as ``--run-config`` (the app must list the keys
a run changes), its log in ``<out-dir>/<run>/run.log``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flsplit.config import RunConfig
from flsplit.protocol import ROUND_WALL_SECONDS, TEST_ACC

RUNS = (
    "local",
    "uniform",
    "dirichlet",
    "local+stragglers",
    "uniform+stragglers",
    "dirichlet+stragglers",
)


def straggler_slowdown(num_clients: int, fraction: float, factor: float) -> str:
    """The ``slowdown`` run-config value making ``fraction`` of the clients slower.

    Clients ``0, k, 2k, ...`` with ``k = round(1 / fraction)`` compute ``factor`` times
    slower from round 0 on.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--straggler-fraction {fraction} must be in (0, 1]")
    every = max(1, round(1 / fraction))
    return ";".join(f"client:{i}:{factor:g}:0" for i in range(0, num_clients, every))


def steps_per_round(task: Any, config: dict[str, Any]) -> int:
    """Steps the local run takes per round: its largest client's batches per epoch."""
    settings = RunConfig.of(config)
    clients = settings.num_clients
    sizes = [len(task.load_data(pid, clients, config)[0].dataset) for pid in range(clients)]
    return math.ceil(max(sizes) / settings.batch_size) * settings.local_epochs


def run_config(
    base: dict[str, Any], name: str, steps: int, slowdown: str
) -> dict[str, Any]:
    """The run config of run ``name`` (see :data:`RUNS`)."""
    sampler, _, extra = name.partition("+")
    config = {**base, "sampler": sampler}
    if sampler != "local":
        config["sync-steps"] = steps
    config["slowdown"] = slowdown if extra == "stragglers" else ""
    return config


def summarize(name: str, history: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Figures of one finished run from its ``history.json``."""
    server = {int(r): m for r, m in history["server"].items()}
    walls = {int(r): float(w) for r, w in history[ROUND_WALL_SECONDS].items()}
    steps = history.get("sync-step-examples", {})
    sizes = [n for per_helper in steps.values() for s in per_helper.values() for n in s]
    return {
        "run": name,
        "accuracy": [round(server[r][TEST_ACC], 4) for r in sorted(server)],
        "final_accuracy": round(server[max(server)][TEST_ACC], 4) if server else None,
        "round_seconds": [round(walls[r], 2) for r in sorted(walls)],
        "train_seconds": round(sum(walls.values()), 2),
        # round 1 also pays for starting the nodes' processes
        "train_seconds_after_round_1": round(sum(w for r, w in walls.items() if r > 1), 2),
        "mean_global_batch": round(sum(sizes) / len(sizes), 2) if sizes else None,
        "run_seconds": round(seconds, 1),
    }


def compare_sampling(
    app_dir: str | Path,
    runs: Sequence[str] = RUNS,
    overrides: dict[str, Any] | None = None,
    straggler_fraction: float = 0.25,
    straggler_factor: float = 4.0,
    output_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run ``app_dir`` once per entry of ``runs``; print and return each run's figures."""
    from flsplit.launch import config_args, load_split_app, read_app_config, simulate_app

    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        raise ValueError(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    task = load_split_app(app_dir).split.task
    base = task.config({**read_app_config(app_dir), **(overrides or {})})
    steps = steps_per_round(task, base)
    slowdown = straggler_slowdown(int(base["num-clients"]), straggler_fraction, straggler_factor)
    root = Path(output_root or tempfile.mkdtemp(prefix="flsplit-sampling-")).resolve()
    print(json.dumps({"steps_per_round": steps, "stragglers": slowdown}), flush=True)
    results = []
    for name in runs:
        config = run_config(base, name, steps, slowdown)
        output = root / name.replace("+", "-")
        config["output-dir"] = str(output)
        # what differs from the app's config goes to flwr run as --run-config
        changed = {k: v for k, v in config.items() if k in (overrides or {}) or base[k] != v}
        output.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with (output / "run.log").open("w") as log:
            code = simulate_app(app_dir, [config_args(changed)], out=log)
        if code != 0:
            raise RuntimeError(f"run {name} failed (exit {code}): {output / 'run.log'}")
        history = json.loads((output / "history.json").read_text())
        results.append(summarize(name, history, time.perf_counter() - start))
        print(json.dumps(results[-1]), flush=True)
    _print_table(results)
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'run':<22} {'accuracy per round (0 = initial)':<40} {'train s':>8} "
        f"{'after r1':>8} {'batch':>6}"
    )
    for r in results:
        accuracy = " ".join(f"{a:.3f}" for a in r["accuracy"])
        batch = f"{r['mean_global_batch']:.1f}" if r["mean_global_batch"] else "-"
        print(
            f"{r['run']:<22} {accuracy:<40} {r['train_seconds']:>8.1f} "
            f"{r['train_seconds_after_round_1']:>8.1f} {batch:>6}"
        )


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the comparison."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sampling_compare",
        description="run a Flower app once per sampler (local, uniform, dirichlet), with and "
        "without stragglers; accuracy per round and training time",
    )
    parser.add_argument("app", help="Flower app directory (e.g. examples/noniid)")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated runs")
    parser.add_argument(
        "--run-config", action="append", default=[], help="key=value overrides, as flwr run"
    )
    parser.add_argument("--straggler-fraction", type=float, default=0.25)
    parser.add_argument("--straggler-factor", type=float, default=4.0)
    parser.add_argument("--out-dir", default=None, help="keep the runs' histories here")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison from the command line; returns the exit code."""
    from flsplit.launch import parse_run_config

    args = build_parser().parse_args(argv)
    results = compare_sampling(
        args.app,
        [r.strip() for r in args.runs.split(",") if r.strip()],
        parse_run_config(args.run_config),
        args.straggler_fraction,
        args.straggler_factor,
        args.out_dir,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
