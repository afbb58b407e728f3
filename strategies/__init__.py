"""Flower server strategies (Message API) for split learning with helper nodes."""

from strategies.split import NodeGrid, SplitStrategy

__all__ = ["NodeGrid", "SplitStrategy"]
