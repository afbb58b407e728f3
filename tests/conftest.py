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
    # The deployment tests go first: they mostly wait on Flower's heartbeats and polling,
    # so under `-n 2` they, not the CPU-bound simulations, run beside the unit tests.
    items.sort(key=lambda item: not Path(item.fspath).match("tests/e2e/test_*deployment*.py"))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook; xdist is not always installed
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (``make test`` runs ``-n 2``), every e2e test goes to one worker,
    one at a time in collection order: they start SuperLinks, Ray and timed failures that
    must not compete with each other. The unit tests are shared out over the workers
    meanwhile; the e2e tests mostly wait on Flower's engines, so that time is free."""
    from xdist.scheduler import LoadScopeScheduling

    e2e = E2E.relative_to(config.rootpath).as_posix() + "/"

    class E2EOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "e2e" if nodeid.startswith(e2e) else nodeid

    return E2EOnOneWorker(config, log)


@pytest.fixture(autouse=True)
def _few_threads():
    # The planner's tests also run where torch is not installed (the lowest Python).
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(2)
