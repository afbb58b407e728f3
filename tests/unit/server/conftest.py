"""Fixtures of the server tests: the strategy tests' task identity, for the tests that
drive a strategy over a fake grid."""

from tests.unit.strategies.conftest import _server_identity  # noqa: F401
