"""Heuristic cut optimizers: fixed and best single cut pairs, ``alternating``, ``integrated``.

See :mod:`flsplit.plan.cuts.optimize` for what each method does and how ``auto``
combines them; every plan here is built by :mod:`flsplit.plan.cuts.plan` and
improved by :func:`flsplit.plan.cuts.repick.repick`.
"""

from __future__ import annotations

import time

import numpy as np

from flsplit.plan.cuts.bounds import joint_bound
from flsplit.plan.cuts.plan import CutPlan, cut_plan, plan_from_indices
from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.cuts.repick import CutState, repick, state_from_plan
from flsplit.plan.instance import STAGE_NAMES, InstanceError
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.solution import PlanningError
from flsplit.plan.scheduling.solve import solve

#: Default initial cuts of ``alternating`` (``"single"`` or ``"shortest"``).
ALTERNATING_START = "single"
#: Proxy weights of helper work screened by ``integrated``.
LAMBDAS: tuple[float, ...] = (0.0, 2.0, 8.0)
#: Single cut pairs (best by lower bound) that ``auto``/``integrated`` also screen.
SINGLE_PAIRS_SCREENED = 3
#: Targets (fractions of the best screened makespan) of the least-helper-work proxy.
TARGETS: tuple[float, ...] = (0.6, 0.7, 0.8)


# --- solving fixed cuts -----------------------------------------------------------------

def solve_choice(problem: CutProblem, choice: np.ndarray, solver: str, time_limit: float,
                 seed: int) -> Plan | None:
    """Planner plan for a cut choice (per client or per client and helper).

    Returns
    -------
    Plan or None
        ``None`` when the choice gives no valid instance or the planner finds no plan
        (e.g. helper memory binds).
    """
    try:
        instance = problem.instance(choice)
        return solve(instance, solver, time_limit=max(0.01, time_limit), seed=seed)
    except (InstanceError, PlanningError):
        return None


def _per_client(choice: np.ndarray, plan: Plan, problem: CutProblem) -> np.ndarray:
    """Per-client pairs from a per-(client, helper) choice and the plan's assignment."""
    if choice.ndim == 1:
        return choice.copy()
    h_index = {h: j for j, h in enumerate(problem.helper_ids)}
    return np.array([choice[k, h_index[plan.assignment[c]]]
                     for k, c in enumerate(problem.client_ids)])


def fixed_cut_plan(problem: CutProblem, pair: tuple[int, int], solver: str = "auto",
                   time_limit: float = 2.0, seed: int = 0) -> CutPlan:
    """Plan with the same cut ``pair`` for every client (a baseline)."""
    index = problem.pair_index(pair)
    bad = ~problem.allowed[:, index]
    if bad.any():
        k = int(np.argmax(bad))
        raise InstanceError(f"cuts[{k}]", f"client {problem.client_ids[k]!r} cannot hold "
                            f"cut {tuple(pair)}")
    choice = np.full(len(problem.client_ids), index)
    instance = problem.instance(choice)
    plan = solve(instance, solver, time_limit=time_limit, seed=seed)
    return cut_plan(problem, choice, plan, "fixed", {"pair": list(pair)})


def single_pair_ranking(problem: CutProblem, exact_top: int = 12) -> list[int]:
    """Pairs every client can hold, best first by a lower bound of their instance.

    A vectorised bound over all pairs (longest shortest client path; earliest release +
    total shortest body work / H + shortest tail) ranks them; the ``exact_top`` best are
    re-ranked by :func:`flsplit.plan.scheduling.bounds.lower_bound` of their instance.
    """
    common = np.flatnonzero(problem.allowed.all(axis=0))
    if not len(common):
        return []
    usable = problem.usable()[:, :, common]
    stages = {s: np.where(usable, problem.stages[s][:, :, common], np.inf)
              for s in STAGE_NAMES}
    paths = sum(stages.values()).min(axis=1)
    work = (stages["body_fwd"] + stages["body_bwd"]).min(axis=1)
    load = (stages["head_fwd_up"].min(axis=(0, 1)) + work.sum(axis=0) / problem.shape[1]
            + stages["down_head_bwd"].min(axis=(0, 1)))
    cheap = np.maximum(paths.max(axis=0), load)
    ranked = [int(common[i]) for i in np.argsort(cheap, kind="stable") if np.isfinite(cheap[i])]
    scored = []
    for p in ranked[:exact_top]:
        try:
            instance = problem.instance(np.full(len(problem.client_ids), p))
        except InstanceError:
            continue
        scored.append((lower_bound(instance), p))
    return [p for _, p in sorted(scored)] + ranked[exact_top:]


def best_single_pair(problem: CutProblem, solver: str = "auto", time_limit: float = 2.0,
                     seed: int = 0, screen: int = 8, screen_time: float = 0.15) -> CutPlan:
    """Best single cut pair for all clients: the ``screen`` pairs with the lowest bound
    are planned with ``greedy`` for ``screen_time`` s, the best gets ``solver``."""
    ranking = single_pair_ranking(problem)[:screen]
    if not ranking:
        raise InstanceError("cuts", "no single cut pair is usable by every client")
    scored = []
    for p in ranking:
        plan = solve_choice(problem, np.full(len(problem.client_ids), p), "greedy",
                             screen_time, seed)
        if plan is not None:
            scored.append((plan.makespan, p))
    best_pair = int(min(scored)[1])
    result = fixed_cut_plan(problem, tuple(int(v) for v in problem.pairs[best_pair]),
                            solver, time_limit, seed)
    result.info["screened"] = len(scored)
    return result


# --- the joint methods ------------------------------------------------------------------

def _improve(problem: CutProblem, state: CutState, solver: str, deadline: float, seed: int,
             slice_s: float) -> tuple[CutState, int]:
    """Alternate repick and re-solve until no gain or ``deadline``; return rounds run."""
    rounds = 0
    while time.perf_counter() < deadline:
        rounds += 1
        before = state.makespan
        state = min(state, repick(problem, state, deadline), key=lambda s: s.makespan)
        left = deadline - time.perf_counter()
        if left > 0.02:
            plan = solve_choice(problem, state.choice, solver, min(slice_s, left), seed)
            if plan is not None and plan.makespan < state.makespan - 1e-9:
                state = state_from_plan(problem, state.choice, plan)
        if state.makespan >= before * (1 - 1e-6):
            break
    return state, rounds


def _start_choice(problem: CutProblem, usable: np.ndarray, start: str) -> np.ndarray:
    """Initial cuts of ``alternating``: ``"single"`` (best single pair by bound) or
    ``"shortest"`` (each client's pair with the shortest critical path)."""
    if start == "single":
        ranking = single_pair_ranking(problem)
        if ranking:
            return np.full(len(problem.client_ids), ranking[0])
    elif start != "shortest":
        raise ValueError(f"start: expected 'single' or 'shortest', got {start!r}")
    paths = sum(problem.stages[s] for s in STAGE_NAMES)
    return np.argmin(np.where(usable, paths, np.inf).min(axis=1), axis=1)


def alternating(problem: CutProblem, time_limit: float = 2.0, seed: int = 0,
                solver: str = "greedy", start: np.ndarray | str | None = None) -> CutPlan:
    """Alternating method (see the module docstring)."""
    begin = time.perf_counter()
    deadline = begin + time_limit
    bound = joint_bound(problem)
    usable = problem.usable()
    if start is None or isinstance(start, str):
        start = _start_choice(problem, usable, start or ALTERNATING_START)
    slice_s = max(0.05, time_limit / 6)
    plan = solve_choice(problem, start, solver, slice_s, seed)
    if plan is None:
        start = np.argmin(np.where(problem.allowed, problem.body_memory[None, :], np.inf),
                          axis=1)
        plan = solve_choice(problem, start, solver, slice_s, seed)
        if plan is None:
            raise PlanningError("helper_memory", "no cut choice packs into helper memory")
    state = state_from_plan(problem, start, plan)
    state, rounds = _improve(problem, state, solver, deadline, seed, slice_s)
    plan = plan_from_indices(problem.instance(state.choice), state.helper_of, state.orders,
                             "alternating")
    plan.solve_time = time.perf_counter() - begin
    return cut_plan(problem, state.choice, plan, "alternating", {"rounds": rounds}, bound)


def _proxy_choice(problem: CutProblem, lam: float, usable: np.ndarray,
                  paths: np.ndarray, work: np.ndarray) -> np.ndarray:
    score = np.where(usable, paths + lam * work, np.inf)
    return np.argmin(score, axis=2)


def _target_choice(usable: np.ndarray, paths: np.ndarray, work: np.ndarray,
                   target: float) -> np.ndarray:
    """Per (client, helper) the pair with the least helper work whose critical path is
    at most ``target`` (the shortest path where none is)."""
    within = usable & (paths <= target)
    light = np.argmin(np.where(within, work, np.inf), axis=2)
    short = np.argmin(np.where(usable, paths, np.inf), axis=2)
    return np.where(within.any(axis=2), light, short)


def integrated(problem: CutProblem, time_limit: float = 2.0, seed: int = 0,
               solver: str = "auto", screen_time: float | None = None,
               singles: int = SINGLE_PAIRS_SCREENED) -> CutPlan:
    """Integrated method (see the module docstring)."""
    begin = time.perf_counter()
    deadline = begin + time_limit
    bound = joint_bound(problem)
    usable = problem.usable()
    paths = sum(problem.stages[s] for s in STAGE_NAMES)
    work = problem.stages["body_fwd"] + problem.stages["body_bwd"]
    num_clients = len(problem.client_ids)
    candidates: list[tuple[str, np.ndarray]] = [
        (f"lam={lam:g}", _proxy_choice(problem, lam, usable, paths, work)) for lam in LAMBDAS]
    candidates += [(f"single={tuple(int(v) for v in problem.pairs[p])}",
                    np.full(num_clients, p)) for p in single_pair_ranking(problem)[:singles]]
    if screen_time is None:
        screen_time = 0.3 * time_limit / (len(candidates) + len(TARGETS))
    screened: list[tuple[float, str, np.ndarray, Plan]] = []

    def screen(label: str, choice: np.ndarray) -> None:
        plan = solve_choice(problem, choice, "greedy", screen_time, seed)
        if plan is not None:
            screened.append((plan.makespan, label, choice, plan))

    for label, choice in candidates:
        screen(label, choice)
    if not screened:  # memory binds: fall back to each client's smallest body
        screen("least-memory", np.argmin(np.where(problem.allowed, problem.body_memory[None, :],
                                                  np.inf), axis=1))
    if not screened:
        raise PlanningError("helper_memory", "no screened cut choice packs into helper memory")
    reference = min(item[0] for item in screened)
    for fraction in TARGETS:
        screen(f"target={fraction:g}", _target_choice(usable, paths, work, fraction * reference))
    screened.sort(key=lambda item: item[0])
    _, label, choice, plan = screened[0]
    left = deadline - time.perf_counter()
    final = solve_choice(problem, choice, solver, 0.5 * left, seed)
    if final is not None and final.makespan < plan.makespan:
        plan = final
    per_client = _per_client(choice, plan, problem)
    state = state_from_plan(problem, per_client, plan)
    state, rounds = _improve(problem, state, "greedy", deadline, seed,
                             max(0.05, 0.2 * time_limit))
    plan = plan_from_indices(problem.instance(state.choice), state.helper_of, state.orders,
                             "integrated")
    plan.solve_time = time.perf_counter() - begin
    singles_screened = [c for _, lab, c, _ in screened if lab.startswith("single")]
    info = {"proxy": label, "screened": [[round(m, 3), lab] for m, lab, _, _ in screened],
            "rounds": rounds,
            "best_single": int(singles_screened[0][0]) if singles_screened else None}
    return cut_plan(problem, state.choice, plan, "integrated", info, bound)
