"""The README's "Securing a deployment" commands are the ones the secured e2e test runs.

``tests/e2e/test_secure_deployment.py`` starts its deployment with the command builders of
:mod:`benchmarks.deployment`; here the README's commands are parsed and compared with
those builders' output for the README's own addresses and directory: the certificate and
key commands must be the same word for word, the Flower commands must use the same flags
with the same files and the same node-config keys (addresses and ports differ on
loopback).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from benchmarks.deployment import (
    CONNECTION,
    client_config,
    connection_toml,
    flwr_run_command,
    helper_config,
    register_command,
    secret_commands,
    superlink_command,
    supernode_command,
)
from tests.paths import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SECRETS = Path("/etc/flsplit")  # where the README keeps them
ADDRESS_OPTIONS = {"--host", "--port", "--superlink"}  # loopback and free ports in the test


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Securing a deployment")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), re.S)


def _commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] not in ("mkdir", "cd"):
                commands.append(words)
    return commands


def _named(program: str, *first: str) -> list[list[str]]:
    return [c for c in _commands() if c[0] == program and c[1 : 1 + len(first)] == list(first)]


def _options(argv: list[str]) -> dict[str, str | bool]:
    """``--flag value`` and bare ``--flag`` of a command line."""
    options: dict[str, str | bool] = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[i + 1] if i + 1 < len(argv) else "--"
            options[word] = True if following.startswith("--") else following
    return options


def _node_config(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(value))


def _same_flags(readme: list[str], test: list[str]) -> None:
    ours, theirs = _options(readme), _options(test)
    assert set(ours) - ADDRESS_OPTIONS == set(theirs) - ADDRESS_OPTIONS, (readme, test)
    for option, value in ours.items():
        if option not in ADDRESS_OPTIONS and option != "--node-config":
            assert theirs[option] == value, option


def test_the_certificate_and_key_commands_are_the_tests_word_for_word():
    readme = [c for c in _commands() if c[0] in ("openssl", "ssh-keygen")]
    assert readme == secret_commands(
        ["helper0"], ["helper0", "client0"], "10.0.0.2", ["10.0.0.5"]
    )


def test_the_superlink_is_started_with_the_tests_tls_and_authentication_flags():
    (readme,) = _named("flower-superlink")
    _same_flags(readme, superlink_command(SECRETS, 8000))
    assert _options(readme)["--host"] == "0.0.0.0"


def test_the_flwr_connection_and_registration_are_the_tests():
    (toml,) = _blocks("toml")
    readme = tomllib.loads(toml)["superlink"][CONNECTION]
    test = tomllib.loads(connection_toml(8000, SECRETS))["superlink"][CONNECTION]
    assert set(readme) == set(test)
    assert readme["root-certificates"] == test["root-certificates"]
    registered = _named("flwr", "supernode", "register")
    assert [c[1:] for c in registered] == [
        register_command(SECRETS, node)[1:] for node in ("helper0", "client0")
    ]


def test_helpers_and_clients_use_the_tests_flags_and_node_config_keys():
    helper, client = _named("flower-supernode")
    test_helper = supernode_command(SECRETS, 8000, 9095, "helper0",
                                    helper_config("127.0.0.1:9800", SECRETS, "helper0"))
    test_client = supernode_command(SECRETS, 8000, 9094, "client0",
                                    client_config(0, 2, SECRETS))  # fmt: skip
    for readme, test in ((helper, test_helper), (client, test_client)):
        _same_flags(readme, test)
        ours = _node_config(str(_options(readme)["--node-config"]))
        theirs = _node_config(str(_options(test)["--node-config"]))
        assert set(ours) == set(theirs), (ours, theirs)
        for key in ours:
            if key.startswith("data-tls-") or key == "role":
                assert ours[key] == theirs[key], key


def test_the_run_is_submitted_as_the_test_submits_it():
    (readme,) = _named("flwr", "run")
    test = flwr_run_command(Path("examples/quickstart"), "output-dir='/var/flsplit/run1'")
    assert readme[1:] == test[1:]
    assert _named("flsplit", "status") == [["flsplit", "status", "/var/flsplit/run1"]]
