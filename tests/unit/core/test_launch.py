"""``flsplit simulate``'s preparation: finding an app's split learning from its ClientApp,
sizing the federation, checking overrides as ``flwr run`` will; and the documented
``flsplit simulate`` / ``flwr run`` commands against the apps they run."""

from __future__ import annotations

import re
import sys

import pytest

from flsplit.launch import (
    _family,
    config_args,
    federation_config,
    load_split_app,
    parse_run_config,
    read_app_config,
)
from flsplit.task import SplitTask
from tests.paths import ROOT

QUICKSTART = ROOT / "examples" / "quickstart"
FLOWER_APP = ROOT / "tests" / "e2e" / "flower_app"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture
def clean_imports(monkeypatch):
    """Loading an app puts its directory on sys.path and its modules in sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == "app" or name.startswith(("plainapp", "quickstart")):
            del sys.modules[name]


def test_a_converted_flower_app_is_found_from_its_client_app(clean_imports):
    app = load_split_app(FLOWER_APP)  # no [tool.flsplit] table, no SplitTask in the server
    assert isinstance(app.split.task, SplitTask)
    assert app.split.run_config == {"num-helpers": 1}
    settings = app.settings({"num-server-rounds": 3})
    assert (settings.num_helpers, settings.num_server_rounds) == (1, 3)
    assert federation_config(settings) == {
        "num-supernodes": 3,
        "init-args-num-cpus": 3,
        "client-resources-num-cpus": 1,
    }


def test_an_app_without_split_learning_is_refused_with_the_fix(tmp_path, clean_imports):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.flwr.app.components]\nserverapp = "plainapp:server"\n'
        'clientapp = "plainapp:client"\n'
    )
    (tmp_path / "plainapp.py").write_text(
        "from flwr.clientapp import ClientApp\nclient = ClientApp()\n"
    )
    with pytest.raises(ValueError, match=r"call flsplit\.enable_split_learning"):
        load_split_app(tmp_path)


def test_overrides_flwr_run_would_refuse_are_refused_first(clean_imports):
    app = load_split_app(QUICKSTART)
    app.check_overrides({"num-server-rounds": 2, "cuts": "conv2,fc1"})
    with pytest.raises(ValueError, match=r"sync-steps.*add sync-steps = 4"):
        app.check_overrides({"sync-steps": 4})


def test_the_federation_runs_every_helper_and_a_client_at_once(clean_imports):
    app = load_split_app(QUICKSTART)
    quickstart = federation_config(app.settings())
    assert quickstart == {
        "num-supernodes": 12,
        "init-args-num-cpus": 12,
        "client-resources-num-cpus": 1,
    }
    load = federation_config(app.settings({"num-clients": 50, "num-helpers": 5}), verbose=True)
    assert (load["num-supernodes"], load["init-args-num-cpus"], load["verbose"]) == (55, 24, True)
    waves = app.settings({"simulation-concurrency": 3})
    assert federation_config(waves)["init-args-num-cpus"] == 3
    with pytest.raises(ValueError, match="raise simulation-concurrency"):
        federation_config(app.settings({"simulation-concurrency": 2}))
    fedavg = app.settings({"simulation-concurrency": 2, "mode": "fedavg"})
    assert federation_config(fedavg)["init-args-num-cpus"] == 2  # no helper waits
    with pytest.raises(ValueError, match="leaves no client next to num-helpers=2"):
        federation_config(app.settings(), num_supernodes=2)
    with pytest.raises(ValueError, match="chain-length=3 needs at least 3 helpers"):
        federation_config(app.settings({"chain-length": 3}))


def test_config_arguments_read_back_as_flwr_run_parses_them():
    config = {"num-supernodes": 12, "cuts": "conv2,fc1", "gantt": True, "lr": 0.5}
    assert parse_run_config([config_args(config)]) == config


def test_the_family_of_a_process_includes_what_outlived_its_parent():
    table = {  # pid: (ppid, session, start time)
        100: (1, 100, 5),  # the SuperLink, leading its own session
        101: (100, 101, 6),  # SuperExec, in a session of its own
        102: (101, 101, 7),  # the simulation process
        103: (1, 101, 8),  # a Ray worker whose parent exited
        104: (1, 100, 9),  # left in the SuperLink's session
        200: (1, 200, 3),  # someone else's SuperLink
        201: (200, 200, 4),
    }
    assert _family(100, table) == {100: 5, 101: 6, 102: 7, 103: 8, 104: 9}


# -- the documented commands ---------------------------------------------------------

_SIMULATE = re.compile(r"flsplit simulate ([\w/.-]+)`?((?:\s+--run-config\s+(['\"]).*?\3)*)", re.S)
_RUN_CONFIG = re.compile(r"--run-config\s+(['\"])(.*?)\1", re.S)
_FLWR_RUN = re.compile(r"flwr run (examples/\w+)([^\n]*)")


def _commands(pattern: re.Pattern[str]) -> list[tuple[str, re.Match[str]]]:
    found = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")  # continued shell lines as one
        for match in pattern.finditer(text):
            found.append((f"{doc.name}: {match.group(0)[:80]}", match))
    return found


def test_every_documented_flsplit_simulate_overrides_only_keys_its_app_lists():
    commands = _commands(_SIMULATE)
    assert len(commands) >= 10
    for where, match in commands:
        app = ROOT / match.group(1).rstrip("`")
        listed = read_app_config(app)
        items = [m.group(2) for m in _RUN_CONFIG.finditer(match.group(2))]
        unknown = set(parse_run_config(items)) - set(listed)
        assert not unknown, f"{where}: {sorted(unknown)} not in {app.name}'s app config"


def test_every_documented_local_flwr_run_sizes_the_federation_for_its_helpers():
    commands = [(w, m) for w, m in _commands(_FLWR_RUN) if "my-superlink" not in m.group(0)]
    assert commands, "no flwr run command in the docs"
    for where, match in commands:
        config = read_app_config(ROOT / match.group(1))
        helpers, clients = config["num-helpers"], config["num-clients"]
        flags = re.findall(r"--federation-config\s+(['\"])(.*?)\1", match.group(2))
        assert flags, f"{where}: no --federation-config"
        federation = parse_run_config([flags[0][1]])
        assert federation["num-supernodes"] == helpers + clients, where
        concurrent = federation["init-args-num-cpus"] // federation["client-resources-num-cpus"]
        assert concurrent >= helpers + 1, where
