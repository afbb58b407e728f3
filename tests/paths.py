"""Where the tests find the checkout and the shared profiles beside it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_PROFILES = ROOT.parent / "shared" / "profiles"
