"""flsplit: parallel split learning with helper nodes for Flower."""

__version__ = "0.1.0"
