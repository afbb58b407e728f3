"""Shared test fixtures, and the ``e2e`` marker on every test under ``tests/e2e/``."""

import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

QUICKSTART = ROOT / "examples" / "quickstart"
if str(QUICKSTART) not in sys.path:
    sys.path.insert(0, str(QUICKSTART))

E2E = ROOT / "tests" / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Runs that start the simulation or deployment engine live in tests/e2e/, so
    # `pytest -m "not e2e"` is the fast loop.
    for item in items:
        if E2E in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.e2e)
    # Without pytest-xdist the deployment tests go first (the order `-n 2` starts them in
    # too, see below).
    items.sort(key=lambda item: _lane(item.nodeid) != DEPLOYMENT)


DEPLOYMENT, SIMULATION = "e2e deployment", "e2e simulation"


def _lane(nodeid: str) -> str | None:
    """Which serial lane an e2e test runs in (``None``: a unit test, run anywhere);
    ``nodeid`` is relative to the checkout, as pytest's are."""
    path = nodeid.split("::", 1)[0]
    if not path.startswith(E2E.relative_to(ROOT).as_posix() + "/"):
        return None
    return DEPLOYMENT if Path(path).match("test_*deployment*.py") else SIMULATION


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook; xdist is not always installed
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (``make test`` runs ``-n 2``) the e2e tests run in two lanes, each
    on one worker, one test at a time in collection order: the deployment tests (real
    SuperLinks and SuperNodes with timed failures; they mostly wait on Flower's
    heartbeats and polling) and the other e2e tests (the simulation engine on Ray, CPU
    bound). No two deployments and no two Ray runs compete; a deployment runs beside a
    simulation, as it runs beside unit tests. Each worker takes unit tests once its lane
    is nearly done."""
    from xdist.scheduler import LoadScopeScheduling

    class TwoE2ELanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _lane(nodeid) or nodeid

    return TwoE2ELanes(config, log)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # One intra-op thread per test process: `make test` runs two workers on two cores, and
    # two threads each make every parallel op wait for a thread another process holds the
    # core of (a ResNet-50 forward on 5 CIFAR images: 0.05 s with one, 2-4 s with two, on
    # a busy 2-core machine). The planner's tests also run where torch is not installed
    # (the lowest Python).
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
