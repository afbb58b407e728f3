"""Cut optimizer: each client's cut pair chosen jointly with assignment and schedule.

Input is a :class:`~flsplit.plan.cuts.problem.CutProblem` (stage times for every client,
helper and candidate cut pair). Methods (:data:`CUT_METHODS`):

``integrated``
    For every (client, helper) pair pre-select a cut pair with a congestion-aware proxy
    (``critical path + lam * helper work`` for :data:`LAMBDAS`; the least helper work
    whose critical path is within a target, :data:`TARGETS`) - pairs the client cannot
    hold, or whose body does not fit the helper, are never taken. These choices and the
    best single pairs are screened with the fast planner, the best is solved with the
    planner, each client keeps the pair of the helper it got, and the result is refined
    by :func:`repick` + re-solve rounds.
``alternating``
    Start from the best single pair (by bound), then repeat: fix cuts -> solve
    assignment and schedule -> :func:`repick` every client's pair given its helper and
    the helper's order, judged by the evaluator's recursion -> until no gain.
``exact``
    One CP-SAT model over (client, helper, cut pair) options with optional intervals
    and NoOverlap per helper (small problems; proves optimality).
``auto`` (default)
    ``exact`` for small problems, else the better of ``integrated`` (40% of the time
    limit) and ``alternating`` (30%); the time left goes to the planner, half for the
    winner's cuts (plus a last repick), half for the best single cut pair screened, and
    the best plan is returned. With more than :data:`AUTO_PHASED_SECONDS`, these phases
    share that much and the rest goes to a local search over cuts and helpers
    (:func:`flsplit.plan.cuts.search.anneal`) before the last planner phase: the phases
    stop gaining after a few seconds, the search keeps gaining for a few minutes.

Every returned plan is judged by :func:`flsplit.plan.evaluate` on the instance built
for the chosen cuts; its ``lower_bound`` is a bound for the *joint* problem
(:func:`joint_bound`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flsplit.plan.cuts.bounds import joint_bound
from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.cuts.search import anneal
from flsplit.plan.evaluator import IndexTask, StageTable, evaluate, helper_finish
from flsplit.plan.instance import STAGE_NAMES, Instance, InstanceError
from flsplit.plan.plan import BWD, FWD, Plan
from flsplit.plan.scheduling.bounds import lower_bound
from flsplit.plan.scheduling.sequencing import best_list_schedule
from flsplit.plan.scheduling.solution import PlanningError
from flsplit.plan.scheduling.solve import solve

CUT_METHODS: tuple[str, ...] = ("auto", "integrated", "alternating", "exact")
#: ``auto`` uses the exact joint model up to this many client-helper pairs and this many
#: non-dominated (client, helper, cut pair) options.
AUTO_EXACT_PAIRS = 16
AUTO_EXACT_OPTIONS = 400
#: Share of ``auto``'s budget for ``integrated``.
AUTO_INTEGRATED_SHARE = 0.4
#: ``auto`` ends ``alternating`` at this share and polishes the winner with the rest.
AUTO_ALTERNATING_SHARE = 0.7
#: Seconds of ``auto``'s budget split between the phases above; any time beyond goes to
#: the local search (:func:`flsplit.plan.cuts.search.anneal`) before the polish.
AUTO_PHASED_SECONDS = 10.0
#: Default initial cuts of ``alternating`` (see :func:`_start_choice`).
ALTERNATING_START = "single"
#: Proxy weights of helper work screened by ``integrated``.
LAMBDAS: tuple[float, ...] = (0.0, 2.0, 8.0)
#: Single cut pairs (best by lower bound) that ``auto``/``integrated`` also screen.
SINGLE_PAIRS_SCREENED = 3
#: Targets (fractions of the best screened makespan) of the least-helper-work proxy.
TARGETS: tuple[float, ...] = (0.6, 0.7, 0.8)


@dataclass
class CutPlan:
    """A joint plan: cut pair per client plus assignment and order.

    Attributes
    ----------
    instance
        Instance built for the chosen cuts (``meta["cuts"]``: client -> ``[c1, c2]``).
    plan
        Evaluated plan on :attr:`instance`; ``lower_bound`` is the joint bound.
    cuts
        Client id -> ``(c1, c2)``.
    method
        Cut method that produced it.
    info
        Details (e.g. the winning phase, the proxy weight).
    """

    instance: Instance
    plan: Plan
    cuts: dict[str, tuple[int, int]]
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        """Evaluator makespan (ms)."""
        return self.plan.makespan


# --- plans from index data -------------------------------------------------------------

def _plan(instance: Instance, helper_of: list[int], orders: list[list[IndexTask]],
          method: str) -> Plan:
    clients, helpers = instance.client_ids, instance.helper_ids
    plan = Plan(
        assignment={clients[k]: helpers[h] for k, h in enumerate(helper_of)},
        order={helpers[h]: [(clients[k], BWD if b else FWD) for k, b in orders[h]]
               for h in range(len(helpers))},
        method=method,
    )
    plan.makespan = evaluate(instance, plan).makespan
    return plan


def _index_solution(instance: Instance, plan: Plan) -> tuple[list[int], list[list[IndexTask]]]:
    c_index = {c: k for k, c in enumerate(instance.client_ids)}
    h_index = {h: j for j, h in enumerate(instance.helper_ids)}
    helper_of = [h_index[plan.assignment[c]] for c in instance.client_ids]
    orders: list[list[IndexTask]] = [[] for _ in instance.helper_ids]
    for helper, tasks in plan.order.items():
        orders[h_index[helper]] = [(c_index[c], kind == BWD) for c, kind in tasks]
    return helper_of, orders


@dataclass
class _State:
    """Per-client cut choice plus assignment and orders, with its evaluated makespan."""

    choice: np.ndarray
    helper_of: list[int]
    orders: list[list[IndexTask]]
    makespan: float

    def copy(self) -> _State:
        return _State(self.choice.copy(), list(self.helper_of),
                      [list(o) for o in self.orders], self.makespan)


def _state_from_plan(problem: CutProblem, choice: np.ndarray, plan: Plan) -> _State:
    instance = problem.instance(choice)
    helper_of, orders = _index_solution(instance, plan)
    return _State(np.asarray(choice).copy(), helper_of, orders, plan.makespan)


def _finish_vector(
    values: dict[str, np.ndarray], order: list[IndexTask], k: int, cand: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A helper's finish and sum of client finishes when client ``k`` takes each
    candidate (stage values ``cand``) and the others their current ``values`` (indexed by
    client); the recursion of :func:`flsplit.plan.evaluator.helper_finish`."""
    size = len(cand["body_fwd"])
    free = np.zeros(size)
    done = np.zeros(size)
    total = np.zeros(size)
    fwd_end: dict[int, np.ndarray] = {}
    for c, is_bwd in order:
        source = cand if c == k else {s: values[s][c] for s in STAGE_NAMES}
        if is_bwd:
            free = np.maximum(free, fwd_end[c] + source["tail_fwd_bwd"]) + source["body_bwd"]
            finish = free + source["down_head_bwd"]
            done = np.maximum(done, finish)
            total = total + finish
        else:
            free = np.maximum(free, source["head_fwd_up"]) + source["body_fwd"]
            fwd_end[c] = free
    return done, total


def repick(problem: CutProblem, state: _State, deadline: float) -> _State:
    """Re-pick every client's cut pair given its helper and the helper's order.

    For each helper, each client in turn takes the usable pair (helper memory respected)
    that minimises the helper's finish, ties broken by the sum of its clients' finishes;
    then the helper is re-sequenced with the planner's priority rules if that is better.
    Returns a new state whose makespan is never larger.
    """
    state = state.copy()
    usable = problem.usable()
    memory, capacity = problem.body_memory, problem.helper_memory
    clients = np.arange(len(state.choice))
    for h, order in enumerate(state.orders):
        members = [k for k, j in enumerate(state.helper_of) if j == h]
        if not members or time.perf_counter() > deadline:
            continue
        values = {s: problem.stages[s][clients, h, state.choice] for s in STAGE_NAMES}
        used = float(memory[state.choice[members]].sum())
        for k in members:
            room = capacity[h] - (used - memory[state.choice[k]]) + 1e-9
            options = np.flatnonzero(usable[k, h] & (memory <= room))
            if len(options) <= 1:
                continue
            cand = {s: problem.stages[s][k, h, options] for s in STAGE_NAMES}
            finish, total = _finish_vector(values, order, k, cand)
            tied = np.flatnonzero(finish <= finish.min() * (1 + 1e-12) + 1e-9)
            pick = int(options[tied[np.argmin(total[tied])]])
            used += memory[pick] - memory[state.choice[k]]
            state.choice[k] = pick
            for s in STAGE_NAMES:
                values[s][k] = problem.stages[s][k, h, pick]
    instance = problem.instance(state.choice)
    table = StageTable(instance)
    for h, order in enumerate(state.orders):
        members = sorted(k for k, j in enumerate(state.helper_of) if j == h)
        if not members:
            continue
        current = helper_finish(table, h, order)
        finish, new_order = best_list_schedule(table, h, members)
        if finish < current - 1e-9:
            state.orders[h] = new_order
    state.makespan = _plan(instance, state.helper_of, state.orders, "").makespan
    return state


def repick_plan(problem: CutProblem, result: CutPlan, time_limit: float = 0.5) -> CutPlan:
    """One :func:`repick` pass over a finished joint plan.

    The makespan never grows; among pairs that keep a helper's finish, each client takes
    the one that lets the helper's clients finish earliest in sum. Useful after a method
    that minimises the makespan alone (``exact``), whose clients off the critical path
    may hold any pair.

    Parameters
    ----------
    problem
        The problem ``result`` was planned for.
    result
        A joint plan of ``problem``.
    time_limit
        Seconds the pass may take.

    Returns
    -------
    CutPlan
        ``result`` itself when nothing changed, else the re-picked plan (same method,
        same lower bound, ``info["repicked"] = True``).
    """
    state = _result_state(problem, result)
    better = repick(problem, state, time.perf_counter() + time_limit)
    same = bool((better.choice == state.choice).all()) and better.orders == state.orders
    if same or better.makespan > state.makespan + 1e-9:
        return result
    return _replanned(problem, result, better.choice, better.helper_of, better.orders,
                      {"repicked": True})


def _result_state(problem: CutProblem, result: CutPlan) -> _State:
    """The search state of a finished joint plan."""
    choice = np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids])
    return _state_from_plan(problem, choice, result.plan)


def _replanned(problem: CutProblem, result: CutPlan, choice: np.ndarray,
               helper_of: list[int], orders: list[list[IndexTask]],
               info: dict[str, Any]) -> CutPlan:
    """``result`` with new cuts, assignment and orders: same method, solve time and lower
    bound, ``info`` added to its own."""
    plan = _plan(problem.instance(choice), helper_of, orders, result.plan.method)
    plan.solve_time = result.plan.solve_time
    return _finish(problem, choice, plan, result.method, {**result.info, **info},
                   result.plan.lower_bound)


# --- solving fixed cuts -----------------------------------------------------------------

def _solve_choice(problem: CutProblem, choice: np.ndarray, solver: str, time_limit: float,
                  seed: int) -> Plan | None:
    """Planner plan for a cut choice (per client or per client and helper), or None."""
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
    return _finish(problem, choice, plan, "fixed", {"pair": list(pair)})


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
        plan = _solve_choice(problem, np.full(len(problem.client_ids), p), "greedy",
                             screen_time, seed)
        if plan is not None:
            scored.append((plan.makespan, p))
    best_pair = int(min(scored)[1])
    result = fixed_cut_plan(problem, tuple(int(v) for v in problem.pairs[best_pair]),
                            solver, time_limit, seed)
    result.info["screened"] = len(scored)
    return result


def _finish(problem: CutProblem, choice: np.ndarray, plan: Plan, method: str,
            info: dict[str, Any], bound: float | None = None) -> CutPlan:
    """Wrap a plan for a per-client choice into an evaluated :class:`CutPlan`."""
    instance = problem.instance(choice)
    plan.makespan = evaluate(instance, plan).makespan
    if bound is not None:
        plan.lower_bound = bound
        plan.proven_optimal = plan.makespan <= bound * (1 + 1e-9) + 1e-9
    cuts = {c: (int(problem.pairs[p][0]), int(problem.pairs[p][1]))
            for c, p in zip(problem.client_ids, choice, strict=True)}
    plan.info = {**plan.info, "cuts": {c: list(v) for c, v in cuts.items()}}
    return CutPlan(instance, plan, cuts, method, info)


# --- the joint methods ------------------------------------------------------------------

def _improve(problem: CutProblem, state: _State, solver: str, deadline: float, seed: int,
             slice_s: float) -> tuple[_State, int]:
    """Alternate repick and re-solve until no gain or ``deadline``; return rounds run."""
    rounds = 0
    while time.perf_counter() < deadline:
        rounds += 1
        before = state.makespan
        state = min(state, repick(problem, state, deadline), key=lambda s: s.makespan)
        left = deadline - time.perf_counter()
        if left > 0.02:
            plan = _solve_choice(problem, state.choice, solver, min(slice_s, left), seed)
            if plan is not None and plan.makespan < state.makespan - 1e-9:
                state = _state_from_plan(problem, state.choice, plan)
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
    plan = _solve_choice(problem, start, solver, slice_s, seed)
    if plan is None:
        start = np.argmin(np.where(problem.allowed, problem.body_memory[None, :], np.inf),
                          axis=1)
        plan = _solve_choice(problem, start, solver, slice_s, seed)
        if plan is None:
            raise PlanningError("helper_memory", "no cut choice packs into helper memory")
    state = _state_from_plan(problem, start, plan)
    state, rounds = _improve(problem, state, solver, deadline, seed, slice_s)
    plan = _plan(problem.instance(state.choice), state.helper_of, state.orders, "alternating")
    plan.solve_time = time.perf_counter() - begin
    return _finish(problem, state.choice, plan, "alternating", {"rounds": rounds}, bound)


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
        plan = _solve_choice(problem, choice, "greedy", screen_time, seed)
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
    final = _solve_choice(problem, choice, solver, 0.5 * left, seed)
    if final is not None and final.makespan < plan.makespan:
        plan = final
    per_client = _per_client(choice, plan, problem)
    state = _state_from_plan(problem, per_client, plan)
    state, rounds = _improve(problem, state, "greedy", deadline, seed,
                             max(0.05, 0.2 * time_limit))
    plan = _plan(problem.instance(state.choice), state.helper_of, state.orders, "integrated")
    plan.solve_time = time.perf_counter() - begin
    singles_screened = [c for _, lab, c, _ in screened if lab.startswith("single")]
    info = {"proxy": label, "screened": [[round(m, 3), lab] for m, lab, _, _ in screened],
            "rounds": rounds,
            "best_single": int(singles_screened[0][0]) if singles_screened else None}
    return _finish(problem, state.choice, plan, "integrated", info, bound)


def _search(problem: CutProblem, result: CutPlan, deadline: float, seed: int) -> CutPlan:
    """Run the local search from ``result`` until ``deadline``; keep the better plan.

    ``info["search"]`` records the moves tried and accepted and the makespan before."""
    state = _result_state(problem, result)
    found = anneal(problem, state.choice, state.helper_of, deadline, orders=state.orders,
                   seed=seed)
    summary = {"iterations": found.iterations, "accepted": found.accepted,
               "start_makespan": result.makespan}
    if found.makespan >= result.makespan - 1e-9:
        result.info["search"] = summary
        return result
    return _replanned(problem, result, found.choice, found.helper_of, found.orders,
                      {"search": summary})


def _polish(problem: CutProblem, result: CutPlan, single: int | None, solver: str,
            deadline: float, seed: int) -> CutPlan:
    """Spend the time left on the planner: half for the winner's cuts (then one repick),
    half for the best single cut pair ``single``; return the best plan."""
    best = result
    jobs: list[tuple[str, np.ndarray]] = [
        ("joint", np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids]))]
    if single is not None:
        jobs.append(("single", np.full(len(problem.client_ids), single)))
    for i, (label, choice) in enumerate(jobs):
        left = (deadline - time.perf_counter() - 0.02) / (len(jobs) - i)
        if left < 0.05:
            break
        plan = _solve_choice(problem, choice, solver, left, seed)
        if plan is None or plan.makespan >= best.makespan - 1e-9:
            continue
        state = _state_from_plan(problem, choice, plan)
        if label == "joint":
            state = min(state, repick(problem, state, deadline), key=lambda s: s.makespan)
        best = _replanned(problem, result, state.choice, state.helper_of, state.orders,
                          {"polished": label})
    return best


def optimize_cuts(problem: CutProblem, method: str = "auto", time_limit: float = 2.0,
                  seed: int = 0, solver: str = "auto") -> CutPlan:
    """Choose cut pairs, assignment and order jointly.

    Parameters
    ----------
    problem
        Stage times per client, helper and candidate pair
        (:func:`flsplit.plan.cuts.problem.build_problem`).
    method
        One of :data:`CUT_METHODS`.
    time_limit
        Seconds for the whole joint plan.
    seed
        Seed of the planner's random choices.
    solver
        Planner method (:data:`flsplit.plan.scheduling.solve.METHODS`) for the final fixed-cut
        solve of ``integrated``; ``alternating`` rounds use ``greedy``.

    Returns
    -------
    CutPlan
        Cuts per client and an evaluated plan whose ``lower_bound`` is
        :func:`joint_bound` (or the exact model's proven bound).
    """
    if method not in CUT_METHODS:
        raise ValueError(f"method: unknown {method!r}, expected one of {', '.join(CUT_METHODS)}")
    begin = time.perf_counter()
    if method == "auto":
        method_used = "integrated"
        num_clients, num_helpers, _ = problem.shape
        if num_clients * num_helpers <= AUTO_EXACT_PAIRS:
            from flsplit.plan.cuts.exact import pareto_options

            if int(pareto_options(problem).sum()) <= AUTO_EXACT_OPTIONS:
                method_used = "exact"
    else:
        method_used = method
    if method_used == "exact":
        from flsplit.plan.cuts.exact import exact_cuts

        result = exact_cuts(problem, time_limit=time_limit, seed=seed)
    elif method_used == "alternating":
        result = alternating(problem, time_limit=time_limit, seed=seed)
    elif method == "auto":
        phased = min(time_limit, AUTO_PHASED_SECONDS)
        search_time = time_limit - phased
        first = integrated(problem, time_limit=AUTO_INTEGRATED_SHARE * phased, seed=seed,
                           solver=solver)
        left = AUTO_ALTERNATING_SHARE * phased - (time.perf_counter() - begin)
        second = alternating(problem, time_limit=max(0.05, left), seed=seed)
        result = min((first, second), key=lambda r: r.makespan)
        method_used = result.method
        if search_time > 0:
            result = _search(problem, result, begin + AUTO_ALTERNATING_SHARE * phased
                             + search_time, seed)
        result = _polish(problem, result, first.info.get("best_single"), solver,
                         begin + time_limit, seed)
    else:
        result = integrated(problem, time_limit=time_limit, seed=seed, solver=solver)
    result.plan.solve_time = time.perf_counter() - begin
    if method == "auto":
        result.info["auto_choice"] = method_used
        result.method = "auto"
    result.plan.method = f"cuts-{result.method}"
    return result
