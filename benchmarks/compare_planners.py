"""Benchmark: the same Flower app run once per planner method, figures side by side.

Every run uses the same seeds, data, emulated devices and links; only the run config's
``planner`` differs. Each run is ``flsplit simulate APP`` (the app's own ServerApp and
ClientApp through ``flwr run``), its log in ``<out-dir>/<method>/run.log``. For each
method it prints one JSON line: mean measured round makespan (rounds after the first),
mean and worst relative error of the predicted makespan, planning time as a share of the
round, and the final server-side accuracy.

Run ``python -m benchmarks.compare_planners APP [--methods ...]`` (``--help`` for the
options).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flsplit.launch import config_args, parse_run_config, simulate_app
from flsplit.protocol import ROUND_WALL_SECONDS, TEST_ACC


def summarize(output_dir: Path, method: str) -> dict[str, Any]:
    """Figures of one finished run from its saved rounds and history."""
    rounds = sorted(
        (json.loads(p.read_text()) for p in output_dir.glob("round-*.json")),
        key=lambda entry: entry["round"],
    )
    history = json.loads((output_dir / "history.json").read_text())
    walls = {int(r): float(w) for r, w in history[ROUND_WALL_SECONDS].items()}
    # a round in which no client finished has nothing measured (its failures say why)
    later = [e for e in rounds if e["round"] > 1 and e["measured_ms"] is not None]
    errors = [abs(e["predicted_ms"] - e["measured_ms"]) / e["measured_ms"] for e in later]
    server = history["server"]
    last = max(server, key=int) if server else None
    return {
        "benchmark": "planner-in-the-loop",
        "method": method,
        "rounds": len(rounds),
        "mean_makespan_ms": round(statistics.mean(e["measured_ms"] for e in later), 1)
        if later
        else None,
        "mean_round_wall_s": round(statistics.mean(walls[e["round"]] for e in later), 3)
        if later
        else None,
        "mean_prediction_error_pct": round(100 * statistics.mean(errors), 1) if errors else None,
        "max_prediction_error_pct": round(100 * max(errors), 1) if errors else None,
        "max_planning_share_pct": round(
            100 * max(e["planning_s"] / walls[e["round"]] for e in rounds), 2
        ),
        "final_test_acc": server[last][TEST_ACC] if last is not None else None,
    }


def compare(
    app_dir: str | Path,
    methods: Sequence[str],
    overrides: dict[str, Any] | None = None,
    output_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run ``app_dir`` once per method and return the figures of each run."""
    root = Path(output_root or tempfile.mkdtemp(prefix="flsplit-compare-")).resolve()
    results = []
    for method in methods:
        output_dir = root / method
        output_dir.mkdir(parents=True, exist_ok=True)
        config = {**(overrides or {}), "planner": method, "output-dir": str(output_dir)}
        # the app's own ServerApp and ClientApp through flwr run, as `flsplit simulate`
        with (output_dir / "run.log").open("w") as log:
            code = simulate_app(app_dir, [config_args(config)], out=log)
        if code != 0:
            raise RuntimeError(f"the {method} run failed (exit {code}): {output_dir / 'run.log'}")
        results.append(summarize(output_dir, method))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["method"] == "random-fcfs"), None)
    if base and base["mean_makespan_ms"]:
        for r in results:
            ratio = r["mean_makespan_ms"] / base["mean_makespan_ms"]
            print(json.dumps({"method": r["method"], "makespan_vs_random_fcfs": round(ratio, 3)}))
    return results


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_planners", description=__doc__.splitlines()[0]
    )
    parser.add_argument("app", help="Flower app directory")
    parser.add_argument("--methods", nargs="+", default=["auto", "random-fcfs"])
    parser.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    parser.add_argument("--out-dir", default=None, help="where runs save rounds (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run an app once per planner method from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    compare(args.app, args.methods, parse_run_config(args.run_config), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
