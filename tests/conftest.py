"""Shared test fixtures."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
if str(QUICKSTART) not in sys.path:
    sys.path.insert(0, str(QUICKSTART))


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
