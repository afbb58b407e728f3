"""Benchmark: a Flower app and its split-learning conversion, side by side under ``flwr run``.

For every seed it runs the plain app on ``--clients`` simulated SuperNodes and the split
app on ``--clients`` plus its ``num-helpers`` more, each as ``flwr run DIR --stream`` with
the same run config (``num-server-rounds``, the seed and ``--run-config``) and Ray sized
to the nodes (``init-args-num-cpus`` = nodes, one CPU per node). Every run has a directory
of its own, which is its working directory (what the app writes lands there) and holds
its log (``flwr-run.log``) and a ``FLWR_HOME`` with a local SuperLink of its own on free
ports, so a SuperLink someone else left running is never reused; the SuperLink and what it
started are stopped by process id when the run ends. The local SuperLink runs the apps in
this Python environment (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, unless
``--install-deps``) with ``WANDB_MODE=offline`` unless the environment sets it.

It reads the server-side accuracy of each run (``--accuracy``: by default the app's
``results.json`` if it wrote one under ``outputs/``, else the last ``Global evaluation``
that Flower's strategy loop logs), prints a table (app, mode, seed, accuracy, wall time)
and the mean difference, and lists the files and log lines the plain app produced that
the split app did not (numbers, dates and run ids masked).

Run ``python -m benchmarks.flower_apps PLAIN_DIR SPLIT_DIR --seeds 0 1 --rounds 3``
(``--help`` for the options).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import glob
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LOG_NAME = "flwr-run.log"
HOME_NAME = "flwr-home"
DEFAULT_JSON = "outputs/**/results.json"
DEFAULT_JSON_PATH = "-1.evaluate_metrics_serverapp.{key}"
#: Log lines that differ between any two runs (Ray's scheduling and tips), not compared.
NOISE = (
    "Ray deduplicates logs",
    "Manually terminating ClientAppActor",
    "Flattening the indices",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
    "warnings.warn(",
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_HEX_ID = re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b")
#: W&B run ids: ``offline-run-20261202_033007-0n30w3er``, ``run-0n30w3er.wandb``
_WANDB_ID = re.compile(r"((?:offline-)?run-(?:\d{8}_\d{6}-)?)[a-z0-9]{8}(?![a-z0-9])")
_DICT_KEY = re.compile(r"'([^']+)':")
_METRIC_RECORD = re.compile(r"MetricRecord:\s*(\{.*\})")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_STRATEGY_TIME = re.compile(r"Strategy execution finished in ([\d.]+)s")


# -- reading what a run reported ---------------------------------------------------------


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes."""
    return _ANSI.sub("", text)


def accuracy_from_log(text: str, key: str = "accuracy") -> float | None:
    """The last server-side evaluation Flower's strategy loop logged: the ``MetricRecord``
    on the line after ``Global evaluation`` (``None`` if the log has none or lacks ``key``)."""
    value = None
    expecting = False
    for line in strip_ansi(text).splitlines():
        if "Global evaluation" in line:
            expecting = True
            continue
        if expecting:
            match = _METRIC_RECORD.search(line)
            if match:
                record = _literal(match.group(1))
                if isinstance(record, Mapping) and key in record:
                    value = float(record[key])
                expecting = False
    return value


def accuracy_from_json(document: Any, path: str) -> float | None:
    """The number at ``path`` in a JSON document: dot-separated keys and list indices
    (``-1.evaluate_metrics_serverapp.accuracy`` = the last entry's server metric)."""
    node = document
    for part in path.split("."):
        if isinstance(node, list) and re.fullmatch(r"-?\d+", part):
            index = int(part)
            if not -len(node) <= index < len(node):
                return None
            node = node[index]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return None
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def accuracy_from_regex(text: str, pattern: str) -> float | None:
    """The first group of the last match of ``pattern`` in the log."""
    matches = re.findall(pattern, strip_ansi(text))
    if not matches:
        return None
    last = matches[-1]
    return float(last[0] if isinstance(last, tuple) else last)


@dataclass(frozen=True)
class AccuracySource:
    """Where a run's accuracy is read (``--accuracy``).

    ``auto``: a JSON file matching ``outputs/**/results.json`` in the run directory if
    there is one, else the log. ``log``: Flower's ``Global evaluation`` log lines.
    ``json[:GLOB[#PATH]]``: the newest file matching ``GLOB`` under the run directory,
    the number at ``PATH`` in it. ``regex:PATTERN``: the last match's first group in the log.
    """

    kind: str
    pattern: str = ""
    path: str = ""

    @classmethod
    def parse(cls, spec: str, key: str = "accuracy") -> AccuracySource:
        """Read an ``--accuracy`` value; ``key`` is the metric name for the defaults."""
        default_path = DEFAULT_JSON_PATH.format(key=key)
        kind, _, rest = spec.partition(":")
        if kind in ("auto", "log") and not rest:
            return cls(kind, DEFAULT_JSON, default_path)
        if kind == "json":
            pattern, _, path = rest.partition("#")
            return cls("json", pattern or DEFAULT_JSON, path or default_path)
        if kind == "regex" and rest:
            re.compile(rest)
            return cls("regex", rest)
        raise ValueError(
            f"--accuracy {spec!r}: use auto, log, json[:GLOB[#PATH]] or regex:PATTERN"
        )

    def read(self, run_dir: Path, log_text: str, key: str = "accuracy") -> tuple[float | None, str]:
        """The run's accuracy and where it came from."""
        if self.kind == "regex":
            return accuracy_from_regex(log_text, self.pattern), "log (regex)"
        if self.kind in ("auto", "json"):
            files = newest_first(run_dir, self.pattern)
            if files:
                document = json.loads(files[0].read_text(encoding="utf-8"))
                return accuracy_from_json(document, self.path), str(files[0].relative_to(run_dir))
            if self.kind == "json":
                return None, f"no file {self.pattern}"
        return accuracy_from_log(log_text, key), "log"


def newest_first(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching the glob ``pattern``, newest first."""
    found = [Path(p) for p in glob.glob(str(root / pattern), recursive=True)]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime,
                  reverse=True)


def rounds_done(log_text: str) -> int:
    """The last ``[ROUND r/R]`` the strategy loop logged (0 if none)."""
    rounds = [int(m.group(1)) for m in _ROUND.finditer(strip_ansi(log_text))]
    return max(rounds, default=0)


def strategy_seconds(log_text: str) -> float | None:
    """``Strategy execution finished in X s`` of Flower's strategy loop, if logged."""
    match = _STRATEGY_TIME.search(strip_ansi(log_text))
    return float(match.group(1)) if match else None


def error_lines(log_text: str, limit: int = 40) -> list[str]:
    """The log's error report: from the first ``ERROR`` or ``Traceback`` line on."""
    lines = strip_ansi(log_text).splitlines()
    start = next(
        (i for i, line in enumerate(lines) if "ERROR" in line or line.startswith("Traceback")),
        None,
    )
    return [] if start is None else lines[start : start + limit]


# -- what a run left behind --------------------------------------------------------------


def mask(text: str) -> str:
    """``text`` with numbers, hex ids and W&B run ids masked, so two runs compare."""
    text = _WANDB_ID.sub(r"\1*", text)
    text = _HEX_ID.sub("*", text)
    return _NUMBER.sub("#", text)


def log_signature(log_text: str) -> set[str]:
    """The masked, non-empty lines of a log, Ray's scheduling noise left out."""
    lines = set()
    for line in strip_ansi(log_text).splitlines():
        line = " ".join(line.split())
        if line and not any(noise in line for noise in NOISE):
            lines.add(mask(line))
    return lines


def compare_logs(plain: set[str], split: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Lines of ``plain`` that ``split`` lacks (masked, as :func:`log_signature` gives
    them), and of those the ones ``split`` logs with more dict keys (the same text up to
    the first ``{``, a superset of the quoted keys): line -> the keys it adds."""
    missing, extended = [], {}
    for line in sorted(plain - split):
        head, brace, _ = line.partition("{")
        keys = set(_DICT_KEY.findall(line))
        added = None
        if brace:
            for other in split:
                if other.startswith(head + "{") and keys <= set(_DICT_KEY.findall(other)):
                    added = sorted(set(_DICT_KEY.findall(other)) - keys)
                    break
        if added is None:
            missing.append(line)
        else:
            extended[line] = added
    return missing, extended


def written_files(run_dir: Path) -> set[str]:
    """Masked paths of the files a run wrote in its directory (its log and
    ``FLWR_HOME`` left out)."""
    files = set()
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] not in (HOME_NAME, LOG_NAME):
            files.add(mask(rel.as_posix()))
    return files


# -- running an app ----------------------------------------------------------------------


def read_app(app_dir: Path) -> tuple[str, dict[str, Any]]:
    """The app's project name and its ``[tool.flwr.app.config]``."""
    with open(app_dir / "pyproject.toml", "rb") as fp:
        project = tomllib.load(fp)
    config = project.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return str(project.get("project", {}).get("name", app_dir.name)), dict(config)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, command line)."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=False
    ).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), parts[2] if len(parts) > 2 else "")
    return table


def superlinks_under(home: Path, table: Mapping[int, tuple[int, str]]) -> list[int]:
    """Process ids of the local SuperLinks whose files are under ``home`` (``FLWR_HOME``)."""
    marker = str(home)
    return [pid for pid, (_, args) in table.items()
            if "flower-superlink" in args and marker in args]


def descendants(roots: Iterable[int], table: Mapping[int, tuple[int, str]]) -> list[int]:
    """``roots`` and every process below them, children first."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    order: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in order:
            continue
        order.append(pid)
        stack.extend(children.get(pid, []))
    return order[::-1]


def stop(pids: Sequence[int], grace: float = 15.0) -> None:
    """SIGTERM ``pids``, SIGKILL those still there after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


@dataclass
class Run:
    """One ``flwr run`` and what it reported."""

    app: str
    mode: str
    seed: int
    nodes: int
    run_dir: str
    accuracy: float | None = None
    source: str = ""
    rounds: int = 0
    wall_s: float = 0.0
    strategy_s: float | None = None
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)


def flwr_run(
    app_dir: Path,
    run_dir: Path,
    nodes: int,
    run_config: str,
    timeout: float,
    install_deps: bool = False,
) -> tuple[str, float, bool]:
    """Run ``app_dir`` with ``flwr run --stream`` in ``run_dir``; return the log, the wall
    time and whether it timed out. The SuperLink it started is stopped by pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    home = run_dir / HOME_NAME
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.setdefault("WANDB_MODE", "offline")
    if not install_deps:
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    flwr = bin_dir / "flwr"
    command = [
        str(flwr if flwr.exists() else "flwr"), "run", str(app_dir.resolve()), "--stream",
        "--run-config", run_config,
        "--federation-config",
        f"num-supernodes={nodes} init-args-num-cpus={nodes} client-resources-num-cpus=1",
    ]
    log_path = run_dir / LOG_NAME
    timed_out = False
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=run_dir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            wall = time.perf_counter() - start
            table = processes()
            started = [proc.pid] if proc.poll() is None else []
            stop(descendants(started + superlinks_under(home, table), table))
            proc.wait()
    return log_path.read_text(encoding="utf-8", errors="replace"), wall, timed_out


def run_config_for(
    app_config: Mapping[str, Any], rounds: int | None, seed: int, args: argparse.Namespace
) -> str:
    """The ``--run-config`` of one run: rounds, seed (if the app has the key) and extras."""
    items = []
    if rounds is not None:
        items.append(f"{args.rounds_key}={rounds}")
    if args.seed_key in app_config:
        items.append(f"{args.seed_key}={seed}")
    items.extend(args.run_config)
    return " ".join(items)


def run_all(args: argparse.Namespace) -> list[Run]:
    """Every seed, plain then split; the table rows."""
    plain_dir, split_dir = Path(args.plain), Path(args.split)
    app, plain_config = read_app(plain_dir)
    _, split_config = read_app(split_dir)
    helpers = args.helpers if args.helpers is not None else int(split_config.get("num-helpers", 1))
    root = Path(args.out_dir or tempfile.mkdtemp(prefix="flower-apps-")).resolve()
    source = AccuracySource.parse(args.accuracy, args.metric)
    for config, where in ((plain_config, plain_dir), (split_config, split_dir)):
        if args.seed_key not in config:
            print(f"note: {where} has no run-config key {args.seed_key!r}; seeds only label "
                  "repetitions", file=sys.stderr)
    for seed in args.seeds:
        for mode in ("plain", "split"):
            run_dir = root / app / f"{mode}-seed{seed}"
            if run_dir.exists() and any(run_dir.iterdir()):
                raise SystemExit(f"{run_dir} is not empty; give another --out-dir")
    runs = []
    for seed in args.seeds:
        for mode, app_dir, config, nodes in (
            ("plain", plain_dir, plain_config, args.clients),
            ("split", split_dir, split_config, args.clients + helpers),
        ):
            run_dir = root / app / f"{mode}-seed{seed}"
            run = Run(app, mode, seed, nodes, str(run_dir))
            log_text, run.wall_s, run.timed_out = flwr_run(
                app_dir, run_dir, nodes, run_config_for(config, args.rounds, seed, args),
                args.timeout, args.install_deps,
            )
            run.accuracy, run.source = source.read(run_dir, log_text, args.metric)
            run.rounds = rounds_done(log_text)
            run.strategy_s = strategy_seconds(log_text)
            if run.accuracy is None or run.timed_out:
                run.errors = error_lines(log_text) or strip_ansi(log_text).splitlines()[-20:]
            runs.append(run)
            print(format_row(run), flush=True)
    return runs


# -- reporting ---------------------------------------------------------------------------

HEADER = f"{'app':<24} {'mode':<6} {'seed':>4} {'nodes':>5} {'rounds':>6} {'accuracy':>9} " \
         f"{'wall s':>7} {'strategy s':>10}  source"


def format_row(run: Run) -> str:
    """One table row."""
    acc = f"{run.accuracy:.4f}" if run.accuracy is not None else "-"
    strat = f"{run.strategy_s:.1f}" if run.strategy_s is not None else "-"
    note = " TIMEOUT" if run.timed_out else ""
    return (f"{run.app:<24} {run.mode:<6} {run.seed:>4} {run.nodes:>5} {run.rounds:>6} "
            f"{acc:>9} {run.wall_s:>7.1f} {strat:>10}  {run.source}{note}")


def summary(runs: Sequence[Run]) -> dict[str, Any]:
    """Mean accuracy and wall time per mode and the split - plain differences (accuracy in
    percentage points; per seed where both runs reported one)."""
    out: dict[str, Any] = {}
    for mode in ("plain", "split"):
        accs = [r.accuracy for r in runs if r.mode == mode and r.accuracy is not None]
        walls = [r.wall_s for r in runs if r.mode == mode]
        out[mode] = {
            "mean_accuracy": statistics.mean(accs) if accs else None,
            "mean_wall_s": statistics.mean(walls) if walls else None,
            "runs": len(walls),
            "failed": len(walls) - len(accs),
        }
    by_seed = {(r.mode, r.seed): r.accuracy for r in runs}
    diffs = {
        seed: 100 * (by_seed[("split", seed)] - by_seed[("plain", seed)])
        for mode, seed in by_seed
        if mode == "plain" and by_seed.get(("plain", seed)) is not None
        and by_seed.get(("split", seed)) is not None
    }
    out["diff_points_per_seed"] = diffs
    out["mean_diff_points"] = statistics.mean(diffs.values()) if diffs else None
    return out


def missing_outputs(runs: Sequence[Run]) -> dict[str, list[str]]:
    """What the plain app wrote (files) or logged (lines) and the split app did not, for
    every seed where both ran, masked (numbers, ids) and merged over the seeds."""
    files: set[str] = set()
    lines: set[str] = set()
    extended: dict[str, list[str]] = {}
    plain = {r.seed: Path(r.run_dir) for r in runs if r.mode == "plain"}
    split = {r.seed: Path(r.run_dir) for r in runs if r.mode == "split"}
    for seed in plain.keys() & split.keys():
        files |= written_files(plain[seed]) - written_files(split[seed])
        missing, more = compare_logs(_log_lines(plain[seed]), _log_lines(split[seed]))
        lines.update(missing)
        extended.update(more)
    return {"files": sorted(files), "log_lines": sorted(lines),
            "log_lines_with_more_keys": [f"{k}  (+{', '.join(v)})" for k, v in
                                         sorted(extended.items())]}


def _log_lines(run_dir: Path) -> set[str]:
    path = run_dir / LOG_NAME
    if not path.exists():
        return set()
    text = path.read_text(encoding="utf-8", errors="replace").replace(str(run_dir), "RUN_DIR")
    return log_signature("\n".join(text.splitlines()[1:]))  # without the command line


def report(runs: Sequence[Run], out: Any = sys.stdout) -> dict[str, Any]:
    """Print the table, the means and differences and the missing outputs."""
    print("\n" + HEADER, file=out)
    for run in runs:
        print(format_row(run), file=out)
    figures = summary(runs)
    print("", file=out)
    for mode in ("plain", "split"):
        m = figures[mode]
        acc = f"{m['mean_accuracy']:.4f}" if m["mean_accuracy"] is not None else "-"
        wall = f"{m['mean_wall_s']:.1f}" if m["mean_wall_s"] is not None else "-"
        print(f"mean {mode}: accuracy {acc}, wall {wall} s "
              f"({m['runs']} runs, {m['failed']} without accuracy)", file=out)
    if figures["mean_diff_points"] is not None:
        diffs = figures["diff_points_per_seed"]
        per_seed = ", ".join(f"seed {s}: {d:+.2f}" for s, d in diffs.items())
        print(f"split - plain: {figures['mean_diff_points']:+.2f} points ({per_seed})", file=out)
    missing = missing_outputs(runs)
    figures["missing_in_split"] = missing
    print(f"\nfiles the plain app wrote that the split app did not: "
          f"{missing['files'] or 'none'}", file=out)
    print(f"log lines the plain app logged that the split app did not: "
          f"{len(missing['log_lines']) or 'none'}", file=out)
    for line in missing["log_lines"][:30]:
        print(f"  {line}", file=out)
    if missing["log_lines_with_more_keys"]:
        print("log lines the split app logs with more keys:", file=out)
        for line in missing["log_lines_with_more_keys"][:30]:
            print(f"  {line}", file=out)
    for run in runs:
        if run.errors:
            print(f"\n{run.mode} seed {run.seed} ({run.run_dir}):", file=out)
            for line in run.errors:
                print(f"  {line}", file=out)
    return figures


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.flower_apps", description=__doc__.splitlines()[0]
    )
    parser.add_argument("plain", help="the Flower app as it is")
    parser.add_argument("split", help="the same app converted to split learning")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one plain and one split run per seed (default: 0 1)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="num-server-rounds for both (default: the apps' own)")
    parser.add_argument("--clients", type=int, default=4,
                        help="clients (default: 4); the split run adds its helpers as nodes")
    parser.add_argument("--helpers", type=int, default=None,
                        help="helpers of the split run (default: its num-helpers)")
    parser.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="more run config for both runs, as flwr run takes it")
    parser.add_argument("--accuracy", default="auto",
                        help="where the accuracy is read: auto (default), log, json[:GLOB[#PATH]], "
                             f"regex:PATTERN (json default: {DEFAULT_JSON}#"
                             f"{DEFAULT_JSON_PATH.format(key='METRIC')})")
    parser.add_argument("--metric", default="accuracy",
                        help="the server-side metric's name for log and json (default: accuracy)")
    parser.add_argument("--seed-key", default="seed",
                        help="run-config key set to the seed, if the app has it (default: seed)")
    parser.add_argument("--rounds-key", default="num-server-rounds",
                        help="run-config key set to --rounds (default: num-server-rounds)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds per run (default: 1800)")
    parser.add_argument("--install-deps", action="store_true",
                        help="let the SuperLink install each app's dependencies (uv)")
    parser.add_argument("--out-dir", default=None,
                        help="where run directories go (default: a new temp directory)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run both apps for every seed and report; exit code 1 if a run gave no accuracy."""
    args = build_parser().parse_args(argv)
    try:
        AccuracySource.parse(args.accuracy, args.metric)
    except (ValueError, re.error) as err:
        raise SystemExit(str(err)) from None
    runs = run_all(args)
    figures = report(runs)
    root = Path(runs[0].run_dir).parent if runs else None
    if root is not None:
        (root / "summary.json").write_text(
            json.dumps({"runs": [asdict(r) for r in runs], **figures}, indent=2) + "\n"
        )
        print(f"\nruns and summary.json in {root}")
    return 0 if all(r.accuracy is not None and not r.timed_out for r in runs) else 1


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


if __name__ == "__main__":
    sys.exit(main())
