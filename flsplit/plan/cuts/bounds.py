"""Lower bounds for the joint problem (cuts, assignment and order together).

Both rely on the evaluator's makespan being non-decreasing in every stage time: a joint
plan uses, per client, one (helper, cut pair) option, so replacing stage times by smaller
ones or widening the options can only lower the optimum.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix

from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.instance import STAGE_NAMES, Instance, InstanceError
from flsplit.plan.scheduling.bounds import lower_bound


def joint_bound(problem: CutProblem) -> float:
    """Lower bound on the joint optimum over cuts, assignments and orders.

    The best of (1) the planner's cheap bounds of a relaxed instance in which every
    stage time is replaced by its minimum over the pairs usable for that client and
    helper and every body by the smallest usable one, and (2) :func:`tradeoff_bound`.
    """
    usable = problem.usable()
    if not usable.any(axis=(1, 2)).all():
        k = int(np.argmin(usable.any(axis=(1, 2))))
        raise InstanceError(f"cuts[{k}]", f"client {problem.client_ids[k]!r} can hold no "
                            "candidate cut pair whose body fits a helper (its memory or "
                            "missing profile data rule out every pair)")
    stages = {s: np.where(usable, problem.stages[s], np.inf).min(axis=2) for s in STAGE_NAMES}
    memory = np.where(problem.allowed, problem.body_memory[None, :], np.inf).min(axis=1)
    fits_any = np.isfinite(stages["body_fwd"])
    stages = {s: np.where(fits_any, v, 0.0) for s, v in stages.items()}
    relaxed = Instance(problem.client_ids, problem.helper_ids, body_memory=memory,
                       helper_memory=problem.helper_memory.copy(), **stages)
    paths = np.where(fits_any, relaxed.critical_paths(), np.inf).min(axis=1).max()
    return max(float(paths), lower_bound(relaxed), tradeoff_bound(problem))


def tradeoff_bound(problem: CutProblem, iterations: int = 40) -> float:
    """Smallest ``T`` at which the helpers can absorb the body work the clients need.

    With makespan ``T`` client ``k`` must use an option (helper, pair) whose critical
    path is at most ``T``, so the helpers do at least ``w_k(T)`` = the least body work
    over those options; all helper work happens between the earliest release ``r`` and
    ``T - q`` (``q`` the shortest tail), so ``sum_k w_k(T) <= H (T - r - q)``.
    ``w_k`` is non-increasing in ``T``: bisection finds the smallest feasible ``T``.
    """
    usable = problem.usable()
    paths = np.where(usable, sum(problem.stages[s] for s in STAGE_NAMES), np.inf)
    work = problem.stages["body_fwd"] + problem.stages["body_bwd"]
    release = float(np.where(usable, problem.stages["head_fwd_up"], np.inf).min())
    tail = float(np.where(usable, problem.stages["down_head_bwd"], np.inf).min())
    helpers = problem.shape[1]

    def feasible(target: float) -> bool:
        need = np.where(paths <= target, work, np.inf).min(axis=(1, 2))
        return bool(need.sum() <= helpers * (target - release - tail) + 1e-9)

    low = float(paths.min(axis=(1, 2)).max())
    if feasible(low):
        return low
    high = 2 * low + 1.0
    while not feasible(high):
        high *= 2
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if feasible(middle) else (middle, high)
    return low


def assignment_bound(problem: CutProblem, rel_tol: float = 1e-3) -> float:
    """Lower bound from a fractional assignment of clients to helpers (an LP).

    Tighter than :func:`tradeoff_bound` when helpers differ: with makespan ``T`` client
    ``k`` on helper ``h`` costs that helper at least ``w_kh(T)``, the least body work over
    the pairs usable on ``h`` whose critical path is at most ``T``, and at least
    ``m_kh(T)`` of its memory (least body memory over the same pairs). ``T`` is feasible
    only if the LP ``sum_h x_kh = 1``, ``sum_k x_kh w_kh(T) <= T - r_h - q_h`` and
    ``sum_k x_kh m_kh(T) <= memory_h``, ``0 <= x <= 1`` has a solution (``r_h``, ``q_h``:
    the shortest head and tail stage on ``h``; a helper with ``r_h + q_h > T`` can serve
    nobody, so its columns are left out). Any joint plan of makespan ``T`` gives an
    integral solution, and feasibility only grows with ``T``, so the largest infeasible
    ``T`` found by bisection (to ``rel_tol``) is a lower bound. Several LP solves: meant
    for reports and benchmarks, not for each planning call.
    """
    usable = problem.usable()
    num_clients, num_helpers, _ = problem.shape
    paths = np.where(usable, sum(problem.stages[s] for s in STAGE_NAMES), np.inf)
    work = problem.stages["body_fwd"] + problem.stages["body_bwd"]
    release = np.where(usable, problem.stages["head_fwd_up"], np.inf).min(axis=(0, 2))
    tail = np.where(usable, problem.stages["down_head_bwd"], np.inf).min(axis=(0, 2))
    memory = np.broadcast_to(problem.body_memory[None, None, :], usable.shape)

    def feasible(target: float) -> bool:
        within = paths <= target
        need = np.where(within, work, np.inf).min(axis=2)
        room = np.where(within, memory, np.inf).min(axis=2)
        # a helper whose shortest head and tail alone exceed the target serves nobody
        need[:, target - release - tail < -1e-9] = np.inf
        if not np.isfinite(need).any(axis=1).all():
            return False
        cells = np.flatnonzero(np.isfinite(need).ravel())
        clients, helpers = np.unravel_index(cells, (num_clients, num_helpers))
        columns = np.arange(len(cells))
        equal = csr_matrix((np.ones(len(cells)), (clients, columns)),
                           shape=(num_clients, len(cells)))
        upper = csr_matrix(
            (np.r_[need.ravel()[cells], room.ravel()[cells]],
             (np.r_[helpers, helpers + num_helpers], np.r_[columns, columns])),
            shape=(2 * num_helpers, len(cells)))
        capacity = np.r_[np.maximum(target - release - tail, 0.0), problem.helper_memory]
        result = linprog(np.zeros(len(cells)), A_ub=upper, b_ub=capacity, A_eq=equal,
                         b_eq=np.ones(num_clients), bounds=(0, 1), method="highs")
        return result.status == 0

    finite = np.where(np.isfinite(paths), paths, np.inf).min(axis=(1, 2))
    low = float(finite.max())
    if not np.isfinite(low):
        return low
    if feasible(low):
        return low
    high = 2 * low + 1.0
    while not feasible(high):
        high *= 2
    while high - low > rel_tol * high:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if feasible(middle) else (middle, high)
    return low
