"""Benchmark: planned helper chains against round-robin chains, on the same Flower app.

Runs the app (default ``examples/multihop``) twice with the same seeds, data, emulated
devices and links: once as configured (a planner with ``chain-length = "auto"``: chains
planned every round) and once with ``planner = "round-robin"`` and ``chain-length = 2``
(chains assigned in turn, inner cuts balancing helper memory). Each run is
``flsplit simulate APP``, its log in ``<out-dir>/<name>/run.log``. Prints one JSON line
per run (mean round wall time after the first round, the planned run's mean measured
makespan and prediction errors, hops per client, final server-side accuracy) and one
line comparing them.

Run ``python -m benchmarks.planned_chains [APP] [--out-dir DIR]`` (``--help`` for the
options), or ``--summarize PLANNED_DIR ROUND_ROBIN_DIR`` for runs already made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flsplit.launch import config_args, parse_run_config, simulate_app
from flsplit.protocol import ROUND_WALL_SECONDS, TEST_ACC

#: The baseline: chains of two helpers assigned round-robin.
ROUND_ROBIN = {"planner": "round-robin", "chain-length": 2}


def summarize(output_dir: Path, name: str) -> dict[str, Any]:
    """Figures of one finished run from its history (and, planned, its saved rounds)."""
    history = json.loads((output_dir / "history.json").read_text())
    walls = {int(r): float(w) for r, w in history[ROUND_WALL_SECONDS].items()}
    later = sorted(r for r in walls if r > 1)
    server = history["server"]
    last = max(server, key=int) if server else None
    figures: dict[str, Any] = {
        "benchmark": "planned-chains",
        "run": name,
        "rounds": len(walls),
        "mean_round_wall_s": round(statistics.mean(walls[r] for r in later), 3)
        if later else None,
        "final_test_acc": server[last][TEST_ACC] if last is not None else None,
    }
    rounds = sorted((json.loads(p.read_text()) for p in output_dir.glob("round-*.json")),
                    key=lambda entry: entry["round"])
    measured = [e for e in rounds if e["round"] > 1 and e["measured_ms"]]
    if measured:
        errors = [(e["predicted_ms"] - e["measured_ms"]) / e["measured_ms"] for e in measured]
        figures.update({
            "mean_makespan_ms": round(statistics.mean(e["measured_ms"] for e in measured), 1),
            "prediction_error_pct": [round(100 * x, 1) for x in errors],
            "max_abs_prediction_error_pct": round(100 * max(abs(x) for x in errors), 1),
            "hops_per_client": [
                dict(Counter(str(len(r)) for r in e["chains"]["routes"].values()))
                for e in rounds
            ],
            "micro_batches": [sorted(set(e["chains"]["micro_batches"].values()))
                              for e in rounds],
        })
    return figures


def compare(planned: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The planned run's figures over the round-robin run's."""
    out: dict[str, Any] = {"benchmark": "planned-chains", "run": "planned / round-robin"}
    if planned["mean_round_wall_s"] and baseline["mean_round_wall_s"]:
        out["round_wall_ratio"] = round(
            planned["mean_round_wall_s"] / baseline["mean_round_wall_s"], 3)
    if planned["final_test_acc"] is not None and baseline["final_test_acc"] is not None:
        out["accuracy_difference_points"] = round(
            100 * (planned["final_test_acc"] - baseline["final_test_acc"]), 2)
    return out


def run(app_dir: str | Path, overrides: dict[str, Any], output_root: str | Path | None
        ) -> list[dict[str, Any]]:
    """Run the app planned and with round-robin chains; print and return the figures."""
    root = Path(output_root or tempfile.mkdtemp(prefix="flsplit-chains-")).resolve()
    results = []
    for name, extra in (("planned", {}), ("round-robin", ROUND_ROBIN)):
        output_dir = root / name
        output_dir.mkdir(parents=True, exist_ok=True)
        config = {**overrides, **extra, "output-dir": str(output_dir)}
        with (output_dir / "run.log").open("w") as log:
            code = simulate_app(app_dir, [config_args(config)], out=log)
        if code != 0:
            raise RuntimeError(f"the {name} run failed (exit {code}): {output_dir / 'run.log'}")
        results.append(summarize(output_dir, name))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps(compare(*results)))
    return results


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.planned_chains", description=__doc__.splitlines()[0]
    )
    parser.add_argument("app", nargs="?", default="examples/multihop",
                        help="Flower app directory (default: examples/multihop)")
    parser.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'")
    parser.add_argument("--out-dir", default=None, help="where runs save rounds (default: temp)")
    parser.add_argument("--summarize", nargs=2, metavar=("PLANNED_DIR", "ROUND_ROBIN_DIR"),
                        help="print the figures of two finished runs instead of running")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or summarize) the comparison from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.summarize:
        planned, baseline = (summarize(Path(d), n) for d, n in
                             zip(args.summarize, ("planned", "round-robin"), strict=True))
        for figures in (planned, baseline, compare(planned, baseline)):
            print(json.dumps(figures))
        return 0
    run(args.app, parse_run_config(args.run_config), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
