"""Benchmark: a client whose data loader is slow, planned every round.

The quickstart app (offline digits data) with one client's training loader sleeping
``--load-s`` seconds before each batch, run with a planner through ``flsplit simulate``
(Flower's simulation engine, the app's own ServerApp and ClientApp). Each round the
planner predicts the round's makespan from what the clients measured so far, their
data-loading time included; the benchmark prints, per round, the predicted and the
measured makespan and the slow client's measured loading time per batch, then one JSON
summary line (mean and worst prediction error from round 2 on).

The app is the quickstart copied into a temporary directory as ``slowloader`` with a
wrapped ``load_data`` (and the run-config keys ``slow-partition`` and ``slow-loader-s``);
the repository's example is not changed.

Run ``python -m benchmarks.slow_loader [--load-s 0.5] [--rounds 5]`` (``--help``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from flsplit.launch import config_args, simulate_app

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart"

#: The app's task: the quickstart's, with one partition's train loader made slow.
TASK_MODULE = '''"""The quickstart task, one client's training loader sleeping before each batch."""

import dataclasses
import time

from slowloader.base import TASK as QUICKSTART


class SlowLoader:
    """Yields ``loader``'s batches, each after sleeping ``seconds`` (a slow data source)."""

    def __init__(self, loader, seconds):
        self.loader, self.seconds = loader, seconds
        self.dataset = loader.dataset

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.seconds)
            yield batch

    def __len__(self):
        return len(self.loader)


def load_data(partition_id, num_partitions, config):
    train, val = QUICKSTART.load_data(partition_id, num_partitions, config)
    if partition_id == int(config.get("slow-partition", 0)):
        train = SlowLoader(train, float(config.get("slow-loader-s", 0.0)))
    return train, val


TASK = dataclasses.replace(QUICKSTART, load_data=load_data)
'''

APP_MODULES = {
    "__init__.py": '"""The quickstart with a slow data loader (benchmarks.slow_loader)."""\n',
    "task.py": TASK_MODULE,
    "client_app.py": (
        "from flsplit import make_client_app\nfrom slowloader.task import TASK\n\n"
        "app = make_client_app(TASK)\n"
    ),
    "server_app.py": (
        "from flsplit import make_server_app\nfrom slowloader.task import TASK\n\n"
        "app = make_server_app(TASK)\n"
    ),
}


def make_app(directory: Path) -> Path:
    """Write the ``slowloader`` Flower app into ``directory``; return its path."""
    app = directory / "slowloader-app"
    package = app / "slowloader"
    package.mkdir(parents=True)
    shutil.copy(QUICKSTART / "quickstart" / "task.py", package / "base.py")
    for name, text in APP_MODULES.items():
        (package / name).write_text(text)
    pyproject = (QUICKSTART / "pyproject.toml").read_text()
    pyproject = pyproject.replace('name = "quickstart"', 'name = "slowloader"')
    pyproject = pyproject.replace("quickstart.server_app:app", "slowloader.server_app:app")
    pyproject = pyproject.replace("quickstart.client_app:app", "slowloader.client_app:app")
    pyproject = pyproject.replace(
        "[tool.flwr.app.config]\n",
        "[tool.flwr.app.config]\n"
        'planner = "greedy"\nplanner-time-limit = 1.0\n'
        "slow-partition = 0\nslow-loader-s = 0.0\n",
    )
    (app / "pyproject.toml").write_text(pyproject)
    return app


def rounds_of(output_dir: Path) -> list[dict[str, Any]]:
    """The saved ``round-N.json`` entries, in round order."""
    return sorted(
        (json.loads(p.read_text()) for p in output_dir.glob("round-*.json")),
        key=lambda entry: entry["round"],
    )


def report(rounds: list[dict[str, Any]], load_s: float) -> dict[str, Any]:
    """Print one line per round; return the summary."""
    print(f"{'round':>5} {'predicted ms':>13} {'measured ms':>12} {'error':>8} "
          f"{'slowest client load ms/batch':>29}")
    for entry in rounds:
        loads = entry.get("client_load_ms", {})
        error = (entry["predicted_ms"] - entry["measured_ms"]) / entry["measured_ms"]
        print(f"{entry['round']:>5} {entry['predicted_ms']:>13.0f} {entry['measured_ms']:>12.0f} "
              f"{100 * error:>+7.1f}% {max(loads.values(), default=0.0):>29.0f}")
    later = [e for e in rounds if e["round"] > 1]
    errors = [abs(e["predicted_ms"] - e["measured_ms"]) / e["measured_ms"] for e in later]
    return {
        "benchmark": "slow-loader",
        "loader_sleep_s": load_s,
        "rounds": len(rounds),
        "mean_error_pct_from_round_2": round(100 * statistics.mean(errors), 1) if errors else None,
        "max_error_pct_from_round_2": round(100 * max(errors), 1) if errors else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.slow_loader", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--load-s", type=float, default=0.5,
                        help="seconds the slow client's loader sleeps per batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--helpers", type=int, default=2)
    parser.add_argument("--planner", default="greedy")
    parser.add_argument("--out-dir", help="keep the app, the log and round-N.json here")
    args = parser.parse_args(argv)

    root = Path(args.out_dir or tempfile.mkdtemp(prefix="flsplit-slow-loader-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    app = make_app(Path(tempfile.mkdtemp(dir=root)))
    output_dir = root / "rounds"
    config = {
        "num-server-rounds": args.rounds,
        "num-clients": args.clients,
        "num-helpers": args.helpers,
        "planner": args.planner,
        "slow-loader-s": args.load_s,
        "fraction-evaluate": 0.0,
        "output-dir": str(output_dir),
    }
    log_path = root / "run.log"
    with log_path.open("w") as log:
        code = simulate_app(app, [config_args(config)], out=log)
    if code != 0:
        print(f"the run failed (exit {code}): {log_path}", file=sys.stderr)
        return code
    print(json.dumps(report(rounds_of(output_dir), args.load_s)))
    print(f"log and rounds: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
