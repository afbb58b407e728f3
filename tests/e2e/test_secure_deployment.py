"""The README's "Securing a deployment" on loopback: Flower's control-plane TLS and
SuperNode authentication, and flsplit's data-plane TLS, with a helper.

:class:`benchmarks.deployment.Deployment` with ``secure=True`` runs the README's commands
(``tests/unit/core/test_readme_security.py`` checks they are the same): a CA, the
SuperLink's certificate and the helper's data-plane certificate (``openssl``), a key pair
per SuperNode (``ssh-keygen``); ``flower-superlink --ssl-ca-certfile --ssl-certfile
--ssl-keyfile --enable-supernode-auth``; ``flwr supernode register`` for every SuperNode;
``flower-supernode --root-certificates --auth-supernode-private-key`` with the
``data-tls-*`` node config; ``flwr run`` through a connection with ``root-certificates``.
One helper and two clients run one round; whether the run completed is read from
``status.json`` and ``history.json``, not from ``flwr run``'s exit code.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.deployment import (
    BIN,
    Deployment,
    client_config,
    deployment_available,
    free_ports,
    supernode_command,
)
from benchmarks.helper_restart import run_config
from flsplit.server.status import COMPLETED, read_status

pytestmark = pytest.mark.skipif(
    not deployment_available(),
    reason="Flower's deployment executables are not installed next to this Python",
)


def test_tls_and_supernode_authentication_on_both_planes_with_a_helper(tmp_path: Path):
    deployment = Deployment(tmp_path, secure=True)
    try:
        with deployment.logs_on_failure():
            started = time.monotonic()
            deployment.up(helpers=1, clients=2)
            assert deployment.secrets is not None
            secrets = deployment.secrets
            assert "Uvicorn running on https://" in deployment.log_text("superlink")

            # A SuperNode whose key was never registered is kept out.
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                 str(secrets / "intruder-auth")],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            intruder = deployment.start(
                "intruder",
                supernode_command(secrets, deployment.superlink_port, free_ports(1)[0], "intruder",
                                  client_config(0, 2, secrets)),
            )  # fmt: skip
            try:
                intruder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("a SuperNode with an unregistered key stayed up for 60 s")
            assert intruder.returncode != 0
            assert "SuperNode ID" not in deployment.log_text("intruder")
            assert "Failed to activate SuperNode" in deployment.log_text("intruder")
            listed = deployment.flwr(
                [str(BIN / "flwr"), "supernode", "list", "my-superlink", "--format", "json"],
                "flwr supernode list",
            ).stdout
            nodes = json.loads(listed[listed.find("{"):])["nodes"]
            ids = {int(n["node-id"]): n["status"] for n in nodes}
            names = ("helper0", "client0", "client1")
            assert {ids.get(deployment.node_id(n)) for n in names} == {"online"}, listed
            assert len(ids) == len(names), listed

            # One round: each round's ClientApps are new processes, so a second round would
            # make the same TLS connections again.
            out = tmp_path / "out"
            run = deployment.flwr_run(run_config(out, 1, clients=2, helpers=1, round_timeout=60))
            log = deployment.finish(run, 300)
            print(f"\nsecured deployment, 1 round: {time.monotonic() - started:.1f} s wall")

            status = read_status(out)
            assert status is not None, log[-3000:]
            assert (status["state"], status["round"], status["error"]) == (COMPLETED, 1, None)
            record = status["rounds"]["1"]
            assert len(record["completed"]) == 2 and record["failed"] == []
            assert set(record["helper-of"].values()) == {deployment.node_id("helper0")}
            history = json.loads((out / "history.json").read_text())
            assert set(history["train"]) == {"1"}
            assert deployment.log_text("helper0").count("helper serving 2 clients") == 1
            assert "(TLS)" in deployment.log_text("helper0")
    finally:
        deployment.stop()
