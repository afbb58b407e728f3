"""Entry point of the planner: :func:`solve` dispatches to the solvers.

Methods
-------
``exact``
    CP-SAT on the full model, warm-started by ``greedy``.
``decomposition``
    Alternating assignment search and exact per-helper sequencing.
``greedy``
    Greedy construction, list scheduling and local search (thousands of clients).
``random-fcfs``, ``balanced-fcfs``
    Literature baselines.
``auto`` (default)
    Picks by size within the time budget and returns the best plan found, never worse
    than the two baselines (they are computed too and kept if better). A method that
    raises :class:`PlanningError` is skipped; ``auto`` fails only when all do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flsplit.plan.instance import Instance
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.baselines import balanced_fcfs, random_fcfs
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.decomposition import decomposition
from flsplit.plan.scheduling.exact import solve_exact
from flsplit.plan.scheduling.greedy import greedy
from flsplit.plan.scheduling.packing import PackingError, PlanningError

METHODS: tuple[str, ...] = (
    "auto", "exact", "decomposition", "greedy", "random-fcfs", "balanced-fcfs"
)
#: ``auto`` runs ``exact`` up to this many client-helper pairs.
AUTO_EXACT_PAIRS = 40
#: ``auto`` runs ``decomposition`` up to this many clients, ``greedy`` above.
AUTO_DECOMPOSITION_CLIENTS = 300
DEFAULT_TIME_LIMIT = 2.0
#: Share of ``auto``'s budget kept free for building and evaluating the final plan.
AUTO_MARGIN = 0.07


def _timed_baseline(
    func: Callable[[Instance, int], Plan], instance: Instance, seed: int, bound: float
) -> Plan:
    plan = func(instance, seed)
    plan.lower_bound = bound
    plan.proven_optimal = plan.makespan <= bound * (1 + 1e-9) + 1e-9
    return plan


def solve(
    instance: Instance,
    method: str = "auto",
    time_limit: float = DEFAULT_TIME_LIMIT,
    seed: int = 0,
) -> Plan:
    """Plan one round.

    Parameters
    ----------
    instance
        The planning instance.
    method
        One of :data:`METHODS`.
    time_limit
        Seconds the solver may use (heuristic phases stop early when they prove
        optimality against the lower bound).
    seed
        Seed of every random choice; equal arguments give equal plans except for
        time-limited searches.

    Returns
    -------
    Plan
        A feasible plan whose ``makespan`` comes from :func:`flsplit.plan.evaluate` and
        whose ``lower_bound`` is the best proven bound the method knows.

    Raises
    ------
    PlanningError
        If no plan was found; a :class:`~flsplit.plan.scheduling.packing.PackingError`
        when the bodies do not pack into the helpers' memory (``proven`` if none exists).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}, expected one of {', '.join(METHODS)}")
    start = time.perf_counter()
    bound = lower_bound(instance)
    if method == "random-fcfs":
        plan = _timed_baseline(random_fcfs, instance, seed, bound)
    elif method == "balanced-fcfs":
        plan = _timed_baseline(balanced_fcfs, instance, seed, bound)
    elif method == "greedy":
        plan = greedy(instance, time_limit=time_limit, seed=seed, bound=bound)
    elif method == "decomposition":
        plan = decomposition(instance, time_limit=time_limit, seed=seed, bound=bound)
    elif method == "exact":
        plan = solve_exact(instance, time_limit=time_limit, seed=seed, bound=bound)
    else:
        plan = _auto(instance, time_limit, seed, bound, start)
    plan.solve_time = time.perf_counter() - start
    return plan


def _auto(instance: Instance, time_limit: float, seed: int, bound: float, start: float) -> Plan:
    candidates: list[Plan] = []
    failures: list[str] = []

    def attempt(name: str, run: Callable[[], Plan]) -> None:
        # a method that finds no plan must not stop the others from trying
        try:
            candidates.append(run())
        except PackingError as exc:
            if exc.proven:  # no assignment fits memory: every method fails alike
                raise
            failures.append(f"{name}: {exc}")
        except PlanningError as exc:
            failures.append(f"{name}: {exc}")

    attempt("random-fcfs", lambda: _timed_baseline(random_fcfs, instance, seed, bound))
    attempt("balanced-fcfs", lambda: _timed_baseline(balanced_fcfs, instance, seed, bound))
    remaining = max(0.05, (1 - AUTO_MARGIN) * time_limit - (time.perf_counter() - start))
    pairs = instance.num_clients * instance.num_helpers
    if pairs <= AUTO_EXACT_PAIRS:
        choice, chosen = "exact", solve_exact
    elif instance.num_clients <= AUTO_DECOMPOSITION_CLIENTS:
        choice, chosen = "decomposition", decomposition
    else:
        choice, chosen = "greedy", greedy
    attempt(choice, lambda: chosen(instance, time_limit=remaining, seed=seed, bound=bound))
    if not candidates and choice != "greedy":
        attempt("greedy", lambda: greedy(instance, time_limit=0.05, seed=seed, bound=bound))
    if not candidates:
        raise PlanningError("auto", "no method found a plan (" + "; ".join(failures) + ")")
    best = min(candidates, key=lambda p: p.makespan)
    best.lower_bound = max(p.lower_bound or 0.0 for p in candidates)
    best.proven_optimal = best.makespan <= best.lower_bound * (1 + 1e-9) + 1e-9
    best.info = {**best.info, "auto_choice": choice, "winner": best.method}
    if failures:
        best.info["failed"] = failures
    best.method = "auto"
    return best
