"""Shared CP-SAT settings: integer time resolution and solver construction."""

from __future__ import annotations

from ortools.sat.python import cp_model

#: Target size of the integer horizon when times must be scaled to ticks.
HORIZON_TICKS = 1_000_000
#: Integer resolution of a helper's memory capacity in models.
MEMORY_TICKS = 1_000_000
#: Default CP-SAT worker threads (the target machines have few cores).
DEFAULT_WORKERS = 2


def make_solver(time_limit: float, seed: int = 0, workers: int = DEFAULT_WORKERS
                ) -> cp_model.CpSolver:
    """A CP-SAT solver with a time limit, a seed and ``workers`` threads."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, time_limit)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    return solver
