"""Flower server strategies (Message API) for split learning with helper nodes."""

from strategies.discovery import NodeGrid
from strategies.planned import PlannedSplitStrategy
from strategies.split import SplitStrategy

__all__ = ["NodeGrid", "PlannedSplitStrategy", "SplitStrategy"]
