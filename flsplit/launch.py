"""``flsplit simulate``: a Flower app run with ``flwr run`` on a local SuperLink of its own.

What :func:`simulate_app` does is what a user could type by hand:

1. Load the app's ``ClientApp`` (``[tool.flwr.app.components] clientapp`` of its
   ``pyproject.toml``) and find what :func:`~flsplit.client.app.enable_split_learning`
   was given there; check the run config (the app's ``[tool.flwr.app.config]`` and the
   ``--run-config`` overrides) as every node will read it, before anything starts.
2. Size the simulated federation (:func:`federation_config`): ``num-helpers +
   num-clients`` virtual nodes, one Ray CPU each and as many Ray CPUs as nodes run at
   once, so that every helper and at least one client run together.
3. Start ``flower-superlink --simulation`` on a free loopback port, with a temporary
   ``FLWR_HOME`` whose ``config.toml`` names it: a SuperLink the user runs (Flower's
   local one on port 39091 included) is neither used nor touched.
4. ``flwr run APP <that SuperLink> --stream --federation-config ... --run-config ...``:
   Flower runs the app's own ``ServerApp`` and ``ClientApp``; the log is printed as it
   comes. Flower's engine limits concurrent ClientApp calls by the CPU count; flsplit's
   ``ClientApp`` lifts that limit where the engine loads it (:mod:`flsplit.engine`).
5. Ask the SuperLink how the run ended (``flwr ls --run-id N --format json``): ``flwr
   run --stream`` exits 0 even when the ``ServerApp`` raised, so its exit code alone
   cannot tell a failed run from a completed one.
6. Stop the SuperLink by its process id, then what it spawned (SuperExec, the
   simulation process, Ray's processes), also by process id; on success, failure,
   Ctrl-C or SIGTERM alike.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from flsplit.config import RunConfig
from flsplit.processes import family as _family
from flsplit.processes import process_table as _process_table
from flsplit.processes import signal_all as _signal_all
from flsplit.processes import still_running as _still_running

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib is new in Python 3.11; tomli is the same parser, kept as a backport
    import tomli as tomllib

#: Most virtual nodes run at once by default: each is a process holding torch (a few
#: hundred MiB), so larger federations run their clients in waves.
DEFAULT_MAX_CONCURRENT = 24
#: The SuperLink connection ``flsplit simulate`` writes into its temporary ``FLWR_HOME``.
CONNECTION = "flsplit-simulate"
STARTUP_TIMEOUT = 60.0  # seconds the SuperLink may take to answer /health
STOP_TIMEOUT = 10.0  # seconds a process may take to exit after SIGTERM before SIGKILL
_RUN_ID = re.compile(r"Successfully started run (\d+)")


# -- the app -------------------------------------------------------------------------


def read_pyproject(app_dir: str | Path) -> dict[str, Any]:
    """Return a Flower app's parsed ``pyproject.toml``."""
    pyproject = Path(app_dir) / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(f"{pyproject} not found: is {app_dir} a Flower app directory?")
    return tomllib.loads(pyproject.read_text())


def read_app_config(app_dir: str | Path) -> dict[str, Any]:
    """Return a Flower app's ``[tool.flwr.app.config]``."""
    flwr = read_pyproject(app_dir).get("tool", {}).get("flwr", {})
    return dict(flwr.get("app", {}).get("config", {}))


def parse_run_config(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``--run-config`` items exactly as ``flwr run`` does (``k=v`` TOML values,
    or one ``.toml`` file)."""
    from flwr.common.config import parse_config_args

    return dict(parse_config_args(list(items)))


@dataclass(frozen=True)
class SplitApp:
    """A Flower app whose ``ClientApp`` runs split learning.

    Attributes
    ----------
    path : Path
        The app directory.
    config : dict
        Its ``[tool.flwr.app.config]``.
    split : SplitLearning
        What its ``ClientApp`` passed to ``enable_split_learning``.
    """

    path: Path
    config: dict[str, Any]
    split: Any

    def settings(self, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        """The run config every node reads: the task's and the ClientApp's defaults,
        the app's config, then ``overrides``."""
        return self.split.task.settings(self.split.run_config, self.config, overrides)

    def check_overrides(self, overrides: Mapping[str, Any]) -> None:
        """Refuse keys ``flwr run`` would refuse: those the app's config does not list."""
        unknown = sorted(set(overrides) - set(self.config))
        if unknown:
            listed = ", ".join(f"{key} = {_toml(overrides[key])}" for key in unknown)
            raise ValueError(
                f"run config {', '.join(unknown)}: not in {self.path / 'pyproject.toml'} "
                "[tool.flwr.app.config], and flwr run overrides only keys listed there; "
                f"add {listed} (or its default) to that table"
            )


def load_split_app(app_dir: str | Path) -> SplitApp:
    """Load a Flower app's ``ClientApp`` and what it runs split learning with.

    Raises
    ------
    ValueError
        If the ``ClientApp`` does not call ``enable_split_learning`` (nor is made by
        ``make_client_app``).
    """
    from flwr.clientapp import ClientApp

    from flsplit.client.app import split_learning_of

    path = Path(app_dir).resolve()
    data = read_pyproject(path)
    flwr = data.get("tool", {}).get("flwr", {}).get("app", {})
    reference = flwr.get("components", {}).get("clientapp")
    if not reference:
        raise ValueError(f"{path / 'pyproject.toml'} names no [tool.flwr.app.components] clientapp")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))  # as Flower loads it: the app directory first
    module_name, _, attribute = reference.partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app")
    split = split_learning_of(app) if isinstance(app, ClientApp) else None
    if split is None:
        raise ValueError(
            f"{reference} ({path}) is not a ClientApp that runs split learning: call "
            "flsplit.enable_split_learning(app, task) on it (or build it with "
            "make_client_app), or run the app with flwr run"
        )
    return SplitApp(path, dict(flwr.get("config", {})), split)


# -- the federation ------------------------------------------------------------------


def _check_chain_links(settings: RunConfig) -> None:
    """Refuse round-robin chains that the run config's ``helper-links`` leave no route
    for among helpers ``0 .. num-helpers - 1`` (the helpers' own node configs can only
    remove links; the server checks those when it assigns the chains).

    Raises
    ------
    ValueError
        Naming the chain length, the links and the fix.
    """
    from strategies.assignment import linked_route

    pairs, length = settings.helper_links, settings.chain.length
    if pairs is None:
        return
    count = settings.num_helpers
    if linked_route(count, 0, length, lambda a, b: (a, b) in pairs) is None:
        named = ", ".join(f"{a}-{b}" for a, b in sorted(pairs) if a < b < count) or "none"
        raise ValueError(
            f"chain-length={length} with helper-links={settings.values['helper-links']!r}: "
            f"no route of {length} helpers each linked to the next among num-helpers="
            f"{count} (links among them: {named}): lower chain-length or add links to "
            "helper-links (empty = all)"
        )


def federation_config(
    settings: RunConfig, num_supernodes: int | None = None, verbose: bool = False
) -> dict[str, Any]:
    """The simulated federation: its size and Ray CPUs so that no helper starves a client.

    ``num-helpers + num-clients`` virtual nodes (or ``num_supernodes``), each holding one
    Ray CPU, and as many Ray CPUs as nodes run at once: all of them, or at most
    ``simulation-concurrency`` (0: :data:`DEFAULT_MAX_CONCURRENT`, but never fewer than
    the helpers and one client), the rest running in waves.

    Returns
    -------
    dict
        ``flwr run --federation-config`` keys: ``num-supernodes``, ``init-args-num-cpus``,
        ``client-resources-num-cpus`` (and ``verbose``).

    Raises
    ------
    ValueError
        If no node is left for a client, a chain needs more helpers than there are, or
        ``simulation-concurrency`` would leave a client waiting for helpers that never
        finish.
    """
    helpers = settings.num_helpers
    total = num_supernodes or helpers + settings.num_clients
    if total <= helpers:
        raise ValueError(
            f"num-supernodes={total} leaves no client next to num-helpers={helpers}: "
            "raise num-clients or lower num-helpers"
        )
    split = settings.mode == "split"
    if split and settings.chain.length > helpers and not settings.planned_chains:
        raise ValueError(
            f"chain-length={settings.chain.length} needs at least {settings.chain.length} "
            f"helpers, num-helpers={helpers}: raise num-helpers or lower chain-length"
        )
    if split and settings.chain.length > 1 and not settings.planned_chains:
        _check_chain_links(settings)
    cap = settings.simulation_concurrency or max(DEFAULT_MAX_CONCURRENT, helpers + 1)
    concurrent = min(total, cap)
    if split and concurrent < helpers + 1:
        raise ValueError(
            f"simulation-concurrency={cap} runs fewer nodes at once than num-helpers + 1 = "
            f"{helpers + 1}, but every helper (busy for the whole round) and a client must "
            "run together: raise simulation-concurrency (0 = all nodes, at most "
            f"{DEFAULT_MAX_CONCURRENT})"
        )
    config: dict[str, Any] = {
        "num-supernodes": total,
        "init-args-num-cpus": concurrent,
        "client-resources-num-cpus": 1,
    }
    if verbose:
        config["verbose"] = True
    return config


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def config_args(config: Mapping[str, Any]) -> str:
    """``config`` as one ``flwr run --run-config`` / ``--federation-config`` argument."""
    return " ".join(f"{key}={_toml(value)}" for key, value in config.items())


# -- processes -----------------------------------------------------------------------


def _executable(name: str) -> str:
    """A Flower executable of this environment: next to this Python, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalSuperLink:
    """A ``flower-superlink --simulation`` of this process's own, on a free loopback port.

    Its ``FLWR_HOME`` is a temporary directory whose ``config.toml`` names it
    :data:`CONNECTION`; :attr:`env` is the environment for ``flwr`` commands that use it.
    :meth:`stop` stops it and what it spawned by process id.

    Parameters
    ----------
    workdir : Path
        A directory for its ``FLWR_HOME`` and log.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "flwr-home"
        self.log_path = workdir / "superlink.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        bin_dir = str(Path(sys.executable).parent)
        no_proxy = ",".join(
            p for p in (os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost") if p
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            # the SuperLink starts flower-superexec and flwr-simulation by name
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
        }

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start it and wait until it answers; raise ``RuntimeError`` with its log if not."""
        self.home.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port may be taken before the SuperLink binds it
            self.port = _free_port()
            (self.home / "config.toml").write_text(
                f'[superlink]\ndefault = "{CONNECTION}"\n\n'
                f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n'
                "insecure = true\n"
            )
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        _executable("flower-superlink"),
                        "--insecure",
                        "--simulation",
                        "--host=127.0.0.1",
                        f"--port={self.port}",
                        # the app runs in this environment, where flsplit and torch are
                        "--disable-runtime-dependency-installation",
                    ],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
                )
            if self._wait_ready():
                return
            if self.proc.poll() is None:
                break  # running but not answering: give up
        self.stop()
        raise RuntimeError(f"the local SuperLink did not start:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with opener.open(f"http://127.0.0.1:{self.port}/health", timeout=1) as res:
                    if res.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def flwr(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``flwr ARGS`` against this SuperLink's ``FLWR_HOME``."""
        return subprocess.run(
            [_executable("flwr"), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )

    def stop(self) -> None:
        """Stop the SuperLink, then what it spawned, each by process id: SIGTERM, and
        SIGKILL what is still running after :data:`STOP_TIMEOUT` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        family = _family(proc.pid, _process_table())
        leaders = set(family)  # the sessions these processes lead are the run's too
        family.pop(proc.pid, None)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        # SuperExec and the simulation process watch their parent's pid and follow it
        # out; Ray's processes follow the simulation. Whatever is left (a process that
        # outlived its parent stays in the session it was started in) goes now.
        table = _process_table()
        family.update(
            {
                pid: started
                for pid, (_, session, started) in table.items()
                if session in leaders and pid != proc.pid
            }
        )
        if not table:  # no /proc: what stayed in the SuperLink's own process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            return
        _signal_all(family, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _still_running(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_all(_still_running(family), signal.SIGKILL)


# -- the run -------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM ends this process through ``finally`` blocks (as Ctrl-C does), so the
    SuperLink is stopped either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the SuperLink is being stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_status(superlink: LocalSuperLink, run_id: int | None, wait: float = 30.0) -> dict:
    """How the run ended, as the SuperLink tells it (``flwr ls --format json``): a dict
    with ``status`` (``finished:completed``, ``finished:failed``, ...) and
    ``status-details``; ``{}`` if it cannot be read."""
    args = ["ls", CONNECTION, "--format", "json"]
    if run_id is not None:
        args += ["--run-id", str(run_id)]
    deadline = time.monotonic() + wait
    run: dict = {}
    while True:
        res = superlink.flwr(*args, timeout=60)
        with contextlib.suppress(ValueError):
            runs = json.loads(res.stdout[res.stdout.find("{") :]).get("runs", [])
            run = runs[-1] if runs else {}
        # the log stream ends with the run; its status may follow a moment later
        if str(run.get("status", "")).startswith("finished") or time.monotonic() > deadline:
            return run
        time.sleep(1.0)


def simulate_app(
    app_dir: str | Path,
    run_config: Sequence[str] = (),
    num_supernodes: int | None = None,
    verbose: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run a split-learning Flower app with ``flwr run`` on a local SuperLink of its own.

    Parameters
    ----------
    app_dir : str or Path
        The Flower app (its ``pyproject.toml`` names its ServerApp and ClientApp).
    run_config : sequence of str
        ``--run-config`` items, passed to ``flwr run`` as given.
    num_supernodes : int, optional
        Virtual nodes (default: ``num-helpers + num-clients`` of the run config).
    verbose : bool
        Debug logging of the simulation engine.
    out : TextIO, optional
        Where the run's log goes (default: standard output).

    Returns
    -------
    int
        0 if the run completed, 1 if it failed or was stopped, 130 on Ctrl-C, or
        ``flwr run``'s exit code if it could not submit the run.
    """
    out = out or sys.stdout
    app = load_split_app(app_dir)
    overrides = parse_run_config(run_config)
    app.check_overrides(overrides)
    federation = federation_config(app.settings(overrides), num_supernodes, verbose)
    command = [
        _executable("flwr"), "run", str(app.path), CONNECTION, "--stream",
        "--federation-config", config_args(federation),
        *(arg for item in run_config for arg in ("--run-config", item)),
    ]  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="flsplit-simulate-"))
    superlink = LocalSuperLink(workdir)
    started = time.monotonic()
    proc: subprocess.Popen | None = None
    try:
        with _sigterm_as_exit():
            superlink.start()
            print(
                f"flsplit simulate: local SuperLink pid {superlink.pid} on "
                f"127.0.0.1:{superlink.port}; flwr run {app_dir} --stream "
                f"--federation-config '{config_args(federation)}'",
                file=out,
                flush=True,
            )
            proc = subprocess.Popen(
                command,
                env=superlink.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
            )
            run_id = None
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                found = _RUN_ID.search(line)
                if found and run_id is None:
                    run_id = int(found.group(1))
            code = proc.wait()
            if code != 0 or run_id is None:
                print(
                    f"flsplit simulate: flwr run exited with {code}; the SuperLink's log ends:\n"
                    f"{superlink.log_tail()}",
                    file=out,
                    flush=True,
                )
                return code or 1
            # `flwr run --stream` exits 0 even when the ServerApp raised: the SuperLink's
            # record of the run (finished:completed / finished:failed) says how it ended.
            run = run_status(superlink, run_id)
            status = run.get("status", "unknown")
            completed = status == "finished:completed"
            details = "" if completed else run.get("status-details") or ""
            print(
                f"flsplit simulate: run {run_id} {status}"
                f"{': ' + details if details else ''} after {time.monotonic() - started:.0f} s",
                file=out,
                flush=True,
            )
            return 0 if completed else 1
    except KeyboardInterrupt:
        print("flsplit simulate: interrupted", file=out, flush=True)
        return 130
    finally:
        with _no_interrupts():
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT)
                if proc.poll() is None:
                    proc.kill()
            pid = superlink.pid
            superlink.stop()
            if pid is not None:
                print(f"flsplit simulate: local SuperLink pid {pid} stopped", file=out, flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
