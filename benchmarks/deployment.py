"""A Flower deployment on loopback, started with the commands the README gives.

A real ``flower-superlink`` and ``flower-supernode`` processes on 127.0.0.1 (helpers and
clients told apart by ``--node-config``), and ``flwr run`` against them through the
connection ``my-superlink`` of a temporary ``FLWR_HOME`` (nothing in the user's
``~/.flwr`` is read or written). Secured (``Deployment(..., secure=True)``), it runs the
README's "Securing a deployment" commands: a CA, the SuperLink's certificate and each
helper's data-plane certificate made with ``openssl`` (with the ``cryptography`` package
where ``openssl`` or ``ssh-keygen`` is missing), SuperNode key pairs with ``ssh-keygen``,
the SuperLink with TLS and ``--enable-supernode-auth``, every SuperNode registered with
``flwr supernode register`` and started with ``--root-certificates`` and
``--auth-supernode-private-key``, helpers serving the data plane over TLS and clients
checking it against the CA. :func:`secret_commands`, :func:`superlink_command`,
:func:`supernode_command`, :func:`register_command` and :func:`flwr_run_command` are
those commands; ``tests/unit/core/test_readme_security.py`` checks that the README's use
the same flags and node-config keys.

Every process runs in its own session, with this checkout first on ``PYTHONPATH`` (the
SuperLink's ServerApp and the SuperNodes' ClientApps import flsplit from here, not from
wherever it is installed). Flower's processes start processes of their own, and a
SIGKILLed parent does not take them along: a SuperLink's SuperExec and ``flwr-serverapp``
run in a session of their own. So :meth:`Deployment.track` records, while they run, every
process each started one spawned (pid and start time), and :meth:`Deployment.stop` stops
all of those by pid, never by name. Every wait is bounded.

Used by ``tests/e2e/test_deployment.py``, ``tests/e2e/test_secure_deployment.py`` and
``python -m benchmarks.helper_restart``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flsplit.processes import family, in_sessions, process_table, signal_all, wait_gone

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
BIN = Path(sys.executable).parent
CONNECTION = "my-superlink"  # the README's name for it
EXECUTABLES = ("flower-superlink", "flower-supernode", "flwr")
LOOPBACK = "127.0.0.1"


def deployment_available() -> bool:
    """Whether Flower's deployment executables are installed next to this Python."""
    return all((BIN / exe).exists() for exe in EXECUTABLES)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the README's commands -------------------------------------------------------------


def _ec_key_args() -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def secret_commands(
    helpers: Sequence[str], nodes: Sequence[str], superlink_ip: str, helper_ips: Sequence[str]
) -> list[list[str]]:
    """The commands that make a secured deployment's files in the current directory: a CA
    (``ca.crt``, ``ca.key``), the SuperLink's certificate for ``superlink_ip`` and
    127.0.0.1 (``superlink.crt``, ``.key``), each helper's data-plane certificate for its
    address (``<helper>.crt``, ``.key``) and each SuperNode's key pair for Flower's
    SuperNode authentication (``<node>-auth``, ``<node>-auth.pub``: OpenSSH, P-384)."""
    commands = [
        ["openssl", "req", "-x509", *_ec_key_args(), "-days", "365", "-subj", "/CN=flsplit-ca",
         "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", "ca.key", "-out", "ca.crt"],
    ]  # fmt: skip
    names = [("superlink", [superlink_ip, LOOPBACK])]
    names += [(helper, [ip]) for helper, ip in zip(helpers, helper_ips, strict=True)]
    for name, ips in names:
        san = ",".join(f"IP:{ip}" for ip in dict.fromkeys(ips))
        commands += [
            ["openssl", "req", *_ec_key_args(), "-subj", f"/CN={name}",
             "-addext", f"subjectAltName={san}", "-keyout", f"{name}.key", "-out", f"{name}.csr"],
            ["openssl", "x509", "-req", "-in", f"{name}.csr", "-copy_extensions", "copy",
             "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "365",
             "-out", f"{name}.crt"],
        ]  # fmt: skip
    commands += [["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", f"{n}-auth"]
                 for n in nodes]  # fmt: skip
    return commands


def superlink_command(secrets: Path | None, port: int) -> list[str]:
    """``flower-superlink`` on 127.0.0.1:``port``: plaintext, or with the README's TLS
    and SuperNode authentication flags (``secrets``: the directory of its files)."""
    if secrets is None:
        security = ["--insecure"]
    else:
        security = [
            "--ssl-ca-certfile", str(secrets / "ca.crt"),
            "--ssl-certfile", str(secrets / "superlink.crt"),
            "--ssl-keyfile", str(secrets / "superlink.key"),
            "--enable-supernode-auth",
        ]  # fmt: skip
    return [
        str(BIN / "flower-superlink"), *security, "--host", LOOPBACK, "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def register_command(secrets: Path, node: str) -> list[str]:
    """``flwr supernode register``: allow ``node``'s public key on the SuperLink."""
    return [str(BIN / "flwr"), "supernode", "register", str(secrets / f"{node}-auth.pub"),
            CONNECTION]  # fmt: skip


def helper_config(address: str, secrets: Path | None, name: str) -> str:
    """A helper's ``--node-config``: its data plane on ``address``, over TLS when
    secured."""
    config = f'role="helper" data-address="{address}" advertise-address="{address}"'
    if secrets is not None:
        config += (
            f' data-tls-cert="{secrets / f"{name}.crt"}" data-tls-key="{secrets / f"{name}.key"}"'
        )
    return config


def client_config(index: int, count: int, secrets: Path | None) -> str:
    """A client's ``--node-config``: its data partition, and the CA that signed the
    helpers' certificates when secured."""
    config = f'role="client" partition-id={index} num-partitions={count}'
    if secrets is not None:
        config += f' data-tls-root-cert="{secrets / "ca.crt"}"'
    return config


def supernode_command(
    secrets: Path | None, superlink_port: int, port: int, name: str, node_config: str
) -> list[str]:
    """``flower-supernode`` ``name``: plaintext, or checking the SuperLink's certificate
    against the CA and authenticating with its key."""
    if secrets is None:
        security = ["--insecure"]
    else:
        security = [
            "--root-certificates", str(secrets / "ca.crt"),
            "--auth-supernode-private-key", str(secrets / f"{name}-auth"),
        ]  # fmt: skip
    return [
        str(BIN / "flower-supernode"), *security,
        "--superlink", f"{LOOPBACK}:{superlink_port}", "--port", str(port),
        "--node-config", node_config,
    ]  # fmt: skip


def flwr_run_command(app: Path, run_config: str) -> list[str]:
    """``flwr run APP my-superlink --stream --run-config ...``."""
    return [str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream", "--run-config",
            run_config]  # fmt: skip


def connection_toml(superlink_port: int, secrets: Path | None) -> str:
    """The ``[superlink.my-superlink]`` connection of ``$FLWR_HOME/config.toml``."""
    security = (
        "insecure = true\n" if secrets is None else f'root-certificates = "{secrets / "ca.crt"}"\n'
    )
    return (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{LOOPBACK}:{superlink_port}"\n{security}'
    )


def make_secrets(
    directory: Path, helpers: Sequence[str], nodes: Sequence[str], env: dict[str, str]
) -> Path:
    """Make the secured deployment's files in ``directory`` with :func:`secret_commands`
    (the README's), or with the ``cryptography`` package where ``openssl`` or
    ``ssh-keygen`` is missing; return ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("openssl") and shutil.which("ssh-keygen"):
        for command in secret_commands(helpers, nodes, LOOPBACK, [LOOPBACK] * len(helpers)):
            subprocess.run(command, cwd=directory, env=env, check=True, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    else:
        _secrets_with_cryptography(directory, helpers, nodes)
    return directory


def _secrets_with_cryptography(directory: Path, helpers: Sequence[str], nodes: Sequence[str]):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip

    def builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey):
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("flsplit-ca", "flsplit-ca", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write_key(ca_key, directory / "ca.key")
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for server in ("superlink", *helpers):
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))])
        cert = builder(server, "flsplit-ca", key).add_extension(san, critical=False)
        cert = cert.sign(ca_key, hashes.SHA256())
        write_key(key, directory / f"{server}.key")
        (directory / f"{server}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for node in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        (directory / f"{node}-auth").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))  # fmt: skip
        (directory / f"{node}-auth.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))  # fmt: skip


# -- the deployment --------------------------------------------------------------------


class Deployment:
    """A SuperLink, helper and client SuperNodes on loopback, each in its own session.

    Parameters
    ----------
    workdir : Path
        An empty directory: logs (``<name>.log``), ``FLWR_HOME``, ``HOME`` and, secured,
        the certificates and keys (``etc/``).
    secure : bool
        Control-plane TLS, SuperNode authentication and data-plane TLS, as the README's
        "Securing a deployment" section starts them.
    say : callable
        Where progress lines go (default: nowhere).
    """

    def __init__(
        self, workdir: Path, secure: bool = False, say: Callable[[str], None] | None = None
    ) -> None:
        self.workdir = workdir
        self.secure = secure
        self.say = say or (lambda _line: None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.commands: dict[str, list[str]] = {}
        self.seen: dict[int, int] = {}  # pid -> start time of everything they spawned
        self.secrets: Path | None = None
        home, flwr_home = workdir / "home", workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        flwr_home.mkdir(parents=True, exist_ok=True)
        no_proxy = "127.0.0.1,localhost"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "FLWR_HOME": str(flwr_home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            # the ServerApp and ClientApps import this checkout's flsplit
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }
        self.superlink_port = free_ports(1)[0]
        self._flwr_home = flwr_home

    # -- processes ----------------------------------------------------------------------

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start ``args`` in a new session, its output appended to ``<name>.log``."""
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.logs[name] = log_path
        self.commands[name] = args
        self.track()
        return proc

    def track(self) -> None:
        """Record every process the started ones spawned (while their parents still
        run; a SIGKILLed parent's children are reparented and lost to a tree walk)."""
        table = process_table()
        for proc in self.procs.values():
            if proc.poll() is None:
                self.seen.update(family(proc.pid, table))

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait_for(
        self, name: str, pattern: str, timeout: float, *also: str, count: int = 1
    ) -> re.Match[str]:
        """Wait until ``name``'s log matches ``pattern`` ``count`` times; return the last
        match. Fail if it (or any of ``also``) exits first, or on timeout."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = list(regex.finditer(self.log_text(name)))
            if len(found) >= count:
                return found[-1]
            for watched in (name, *also):
                if self.procs[watched].poll() is not None:
                    raise AssertionError(f"{watched} exited ({self.procs[watched].returncode})")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {pattern!r} in its log within {timeout:.0f} s")
            self.track()
            time.sleep(0.2)

    def node_id(self, name: str) -> int:
        """The SuperNode id ``name`` got from the SuperLink (its latest start's)."""
        found = re.findall(r"SuperNode ID: (\d+)", self.log_text(name))
        if not found:
            raise AssertionError(f"{name} has no SuperNode ID yet")
        return int(found[-1])

    def kill(self, name: str) -> dict[int, int]:
        """SIGKILL SuperNode ``name`` and everything it started (its SuperExec, its
        ClientApps) at once, as when its machine dies; return their pids."""
        self.track()
        proc = self.procs[name]
        victims = family(proc.pid, process_table())
        signal_all(victims, signal.SIGKILL)
        proc.wait(timeout=10)
        left = wait_gone(victims, 10)
        if left:
            raise AssertionError(f"{name}: processes {sorted(left)} survived SIGKILL")
        self.say(f"{name}: SIGKILLed pids {sorted(victims)}")
        return victims

    def restart(self, name: str, timeout: float = 90) -> int:
        """Start ``name`` again with the same command; return its new SuperNode id once
        it has one."""
        if self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is still running")
        starts = len(re.findall(r"SuperNode ID: \d+", self.log_text(name)))
        self.start(name, self.commands[name])
        self.wait_for(name, r"SuperNode ID: \d+", timeout, count=starts + 1)
        return self.node_id(name)

    # -- the federation -----------------------------------------------------------------

    def up(self, helpers: int, clients: int) -> None:
        """The SuperLink, then ``helpers`` helper and ``clients`` client SuperNodes
        (``helper0``..., ``client0``...), registered first when secured; return once
        every SuperNode has its id."""
        helper_names = [f"helper{i}" for i in range(helpers)]
        client_names = [f"client{i}" for i in range(clients)]
        data_ports = free_ports(helpers)
        if self.secure:
            self.secrets = make_secrets(
                self.workdir / "etc", helper_names, helper_names + client_names, self.env
            )
        (self._flwr_home / "config.toml").write_text(
            connection_toml(self.superlink_port, self.secrets)
        )
        self.start("superlink", superlink_command(self.secrets, self.superlink_port))
        self.wait_for("superlink", r"Uvicorn running on", 60)
        configs = {
            name: helper_config(f"{LOOPBACK}:{port}", self.secrets, name)
            for name, port in zip(helper_names, data_ports, strict=True)
        }
        configs.update(
            {name: client_config(i, clients, self.secrets) for i, name in enumerate(client_names)}
        )
        if self.secrets is not None:
            for name in configs:
                self.flwr(register_command(self.secrets, name), f"register {name}")
        node_ports = free_ports(len(configs))
        for (name, config), port in zip(configs.items(), node_ports, strict=True):
            command = supernode_command(self.secrets, self.superlink_port, port, name, config)
            self.start(name, command)
        for name in configs:
            self.wait_for(name, r"SuperNode ID: \d+", 90, "superlink")
        self.say(f"SuperLink and {len(configs)} SuperNodes up in {self.workdir}")

    def flwr(self, command: list[str], what: str) -> subprocess.CompletedProcess:
        """Run a ``flwr`` command against the deployment; fail with its output if it
        fails."""
        done = subprocess.run(
            command, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"{what} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def flwr_run(self, run_config: str, app: Path = QUICKSTART) -> subprocess.Popen:
        """Submit ``app`` with ``flwr run ... --stream``; its log goes to ``flwr-run.log``."""
        return self.start("flwr-run", flwr_run_command(app, run_config))

    def finish(self, proc: subprocess.Popen, timeout: float) -> str:
        """Wait (bounded) for ``proc`` to exit and return the ``flwr run`` log."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"flwr run did not finish within {timeout:.0f} s")
            self.track()
            time.sleep(0.5)
        return self.log_text("flwr-run")

    def report(self) -> str:
        return "\n".join(
            f"===== {name} (pid {self.procs[name].pid}, exit {self.procs[name].poll()}): "
            f"{path}\n{tail(path)}"
            for name, path in self.logs.items()
        )

    @contextlib.contextmanager
    def logs_on_failure(self):
        try:
            yield
        except BaseException:
            print(self.report(), file=sys.stderr)
            raise

    def stop(self) -> list[int]:
        """Stop every process started here and everything they spawned, by pid: SIGTERM,
        then SIGKILL what is left. Return the pids of spawned processes still running
        once the started ones had exited (what "children follow their parent out" would
        have left behind)."""
        self.track()
        running = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # What they spawned: recorded while they ran, and anything in a session one of
        # those processes led (a ServerApp started after the last look, say).
        # A session id is not reused while a process is in it; a recorded pid now held by
        # another process is someone else's, and so is its session.
        table = process_table()
        leaders = [p for p, t in self.seen.items() if table.get(p, (0, 0, t))[2] == t]
        spawned = {**self.seen, **in_sessions(leaders, table)}
        for proc in self.procs.values():
            spawned.pop(proc.pid, None)
        orphans = wait_gone(spawned, 0.5)
        signal_all(orphans, signal.SIGTERM)
        left = wait_gone(orphans, 10)
        signal_all(left, signal.SIGKILL)
        if wait_gone(left, 10):
            raise RuntimeError(f"processes {sorted(left)} survived SIGKILL")
        return sorted(orphans)
