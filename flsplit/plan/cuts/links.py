"""Shares of a helper's own link among the clients it serves.

A helper whose link (``link_mbps`` in NODES.json) is narrower than the sum of its
clients' links cannot give each of them its full rate. Client ``k`` on helper ``h`` gets
a fixed share ``s_k`` of the helper's capacity ``U_h`` (the shares of one helper sum to
1) and transfers at ``min(r_kh, s_k * U_h)``, its own link rate or its share, whichever
is lower. Fixed shares (a rate limit per client, the bandwidth allocation of EdgeSplit)
keep every transfer time fixed, so the evaluator judges these plans like any other.

Per batch a client with cut pair ``(c1, c2)`` moves ``V = 2 a[c1 - 1] + 2 a[c2 - 1]``
KiB (activations and gradients at both cuts); at rate ``R`` that takes
``V * 8.192 / R`` ms on top of its compute. Share rules, per helper:

- ``"equal"``: ``1 / n`` each;
- ``"volume"``: in proportion to ``V``;
- ``"min-max-path"``: the shares that minimise the longest critical path (compute plus
  transfers) among the helper's clients, by bisection on that length.

:func:`allocate_shares` tries every rule and keeps, per helper, the one whose helper
finishes first once its order is rebuilt. :func:`plan_shared_links` alternates cut,
assignment and order planning (:func:`flsplit.plan.cuts.optimize.optimize_cuts`) with share
allocation, as EdgeSplit alternates cuts and bandwidth, and keeps the best plan the
evaluator measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from flsplit.plan.cuts.optimize import optimize_cuts
from flsplit.plan.cuts.plan import CutPlan, plan_from_indices
from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.evaluator import IndexTask, StageTable
from flsplit.plan.generator import KIB_TO_MS_AT_1MBIT
from flsplit.plan.instance import STAGE_NAMES, Instance
from flsplit.plan.plan import Plan
from flsplit.plan.scheduling.sequencing import best_list_schedule

#: Share rules tried per helper, in order of preference on ties.
SHARE_RULES: tuple[str, ...] = ("min-max-path", "volume", "equal")
#: Alternations of planning and share allocation in :func:`plan_shared_links`.
ROUNDS = 3
#: Lowest rate given to a share (only a client that sends nothing gets a zero share).
_FLOOR_MBPS = 1e-9


def transfer_volume(problem: CutProblem, choice: np.ndarray) -> np.ndarray:
    """Per client, its transfer time (ms) over a 1 Mbit/s link for its pair."""
    if problem.cut_kib is None:
        raise ValueError("problem: built without activation sizes (use build_problem)")
    return 2.0 * problem.cut_kib[np.asarray(choice, dtype=int)].sum(axis=1) * KIB_TO_MS_AT_1MBIT


def rule_shares(rule: str, volume: np.ndarray, compute: np.ndarray, own_mbps: np.ndarray,
                link_mbps: float) -> np.ndarray:
    """Shares of one helper's link for its clients under ``rule``.

    Parameters
    ----------
    rule
        One of :data:`SHARE_RULES`.
    volume
        Per client, transfer time (ms) at 1 Mbit/s.
    compute
        Per client, its critical path without transfers (ms).
    own_mbps
        Per client, its own link rate to the helper.
    link_mbps
        The helper's link capacity.

    Returns
    -------
    numpy.ndarray
        Non-negative shares summing to 1.
    """
    count = len(volume)
    equal = np.full(count, 1.0 / count)
    if rule == "equal" or volume.sum() <= 0:
        return equal
    if rule == "volume":
        return volume / volume.sum()
    if rule != "min-max-path":
        raise ValueError(f"rule: unknown {rule!r}, expected one of {', '.join(SHARE_RULES)}")

    def needed(length: float) -> np.ndarray:
        return volume / (link_mbps * np.maximum(length - compute, 1e-12))

    low = float((compute + volume / own_mbps).max())  # no share beats the own link
    high = float(compute.max() + volume.sum() / link_mbps)  # sum(needed(high)) <= 1
    if needed(low).sum() > 1.0:
        for _ in range(60):
            middle = 0.5 * (low + high)
            low, high = (middle, high) if needed(middle).sum() > 1.0 else (low, middle)
        low = high
    shares = needed(low)
    return shares / shares.sum()


def effective_rates(problem: CutProblem, helper_of: Sequence[int],
                    shares: np.ndarray) -> np.ndarray:
    """``K x H`` rates: a client's share of its own helper's link, and for every other
    helper an equal share among that helper's clients plus itself (what it would get
    after a move). Unshared links (``inf``) leave the own rates as they are."""
    rates = np.array(problem.rates_mbps, dtype=float)
    links = problem.link_mbps
    served = np.bincount(np.asarray(helper_of), minlength=len(links))
    prospective = np.minimum(rates, links[None, :] / (served[None, :] + 1))
    for k, h in enumerate(helper_of):
        if math.isfinite(links[h]):
            prospective[k, h] = max(min(rates[k, h], shares[k] * links[h]), _FLOOR_MBPS)
        else:
            prospective[k, h] = rates[k, h]
    return prospective


def _compute(problem: CutProblem, choice: np.ndarray, helper_of: Sequence[int]
             ) -> tuple[np.ndarray, np.ndarray]:
    clients = np.arange(len(choice))
    helpers = np.asarray(helper_of)
    path = sum(problem.stages[s][clients, helpers, choice] for s in STAGE_NAMES)
    volume = transfer_volume(problem, choice)
    own = problem.rates_mbps[clients, helpers]
    return volume, path - volume / own


def _chosen(problem: CutProblem, choice: np.ndarray) -> tuple[CutProblem, np.ndarray]:
    """``problem`` restricted to the pairs ``choice`` uses, and ``choice`` in it: transfer
    times are then recomputed for those pairs only."""
    used, local = np.unique(np.asarray(choice, dtype=int), return_inverse=True)
    return problem.restricted(used), local


def allocate_shares(problem: CutProblem, choice: np.ndarray, helper_of: Sequence[int],
                    rules: Sequence[str] = SHARE_RULES
                    ) -> tuple[np.ndarray, dict[int, str]]:
    """Per client, its share of its helper's link (``nan`` where the link is not
    shared), and per shared helper the rule that won.

    Every rule's shares are tried with the helper's order rebuilt by the planner's
    priority rules; the one with the earliest helper finish is kept.
    """
    choice = np.asarray(choice, dtype=int)
    volume, compute = _compute(problem, choice, helper_of)
    chosen, local = _chosen(problem, choice)
    shares = np.full(len(choice), np.nan)
    winners: dict[int, str] = {}
    for h, link in enumerate(problem.link_mbps):
        members = [k for k, j in enumerate(helper_of) if j == h]
        if not members or not math.isfinite(link):
            continue
        best: tuple[float, np.ndarray, str] | None = None
        for rule in rules:
            trial = rule_shares(rule, volume[members], compute[members],
                                problem.rates_mbps[members, h], float(link))
            rates = np.array(problem.rates_mbps, dtype=float)
            rates[members, h] = np.maximum(np.minimum(rates[members, h], trial * link),
                                           _FLOOR_MBPS)
            table = StageTable(chosen.with_rates(rates).instance(local))
            finish, _ = best_list_schedule(table, h, members)
            if best is None or finish < best[0] - 1e-9:
                best = (finish, trial, rule)
        assert best is not None
        shares[members] = best[1]
        winners[h] = best[2]
    return shares, winners


def _indexed(problem: CutProblem, planned: CutPlan) -> tuple[np.ndarray, list[int]]:
    """Pair index and helper index per client of a joint plan."""
    choice = np.array([problem.pair_index(planned.cuts[c]) for c in problem.client_ids])
    h_index = {h: j for j, h in enumerate(problem.helper_ids)}
    return choice, [h_index[planned.plan.assignment[c]] for c in problem.client_ids]


def _sequenced(problem: CutProblem, choice: np.ndarray, helper_of: list[int],
               rates: np.ndarray, method: str) -> tuple[Instance, Plan]:
    """The instance at ``rates`` and its evaluated plan, every helper's order rebuilt by
    the priority rules."""
    chosen, local = _chosen(problem, choice)
    instance = chosen.with_rates(rates).instance(local)
    table = StageTable(instance)
    orders: list[list[IndexTask]] = [
        best_list_schedule(table, h, [k for k, j in enumerate(helper_of) if j == h])[1]
        for h in range(len(problem.helper_ids))]
    return instance, plan_from_indices(instance, helper_of, orders, method)


def plan_shared_links(problem: CutProblem, method: str = "auto", time_limit: float = 2.0,
                      seed: int = 0, solver: str = "auto", rounds: int = ROUNDS) -> CutPlan:
    """Plan cuts, assignment, order and link shares together.

    Starts from the rates every client would get with an equal share of a helper serving
    ``ceil(K / H)`` clients; each round plans for the current rates, allocates the shares
    of that plan (:func:`allocate_shares`), rebuilds every helper's order for the shared
    rates and measures the plan with the evaluator; the next round plans for the rates
    those shares give. Without a shared link this is :func:`optimize_cuts`.

    Returns
    -------
    CutPlan
        The best plan measured; its instance has the shared transfer times,
        ``info["shares"]`` maps each client to its share (``None`` if unshared) and
        ``info["share_rules"]`` each shared helper to the winning rule. The plan has no
        lower bound (the joint bound assumes fixed rates).
    """
    if problem.link_mbps is None or not np.isfinite(problem.link_mbps).any():
        return optimize_cuts(problem, method, time_limit=time_limit, seed=seed, solver=solver)
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    begin = time.perf_counter()
    num_clients, num_helpers, _ = problem.shape
    crowd = math.ceil(num_clients / num_helpers)
    rates = np.minimum(problem.rates_mbps, problem.link_mbps[None, :] / crowd)
    best: CutPlan | None = None
    for done in range(rounds):
        left = time_limit - (time.perf_counter() - begin)
        if best is not None and left <= 0:
            break
        planned = optimize_cuts(problem.with_rates(rates), method,
                                time_limit=max(0.05, left / (rounds - done)), seed=seed,
                                solver=solver)
        choice, helper_of = _indexed(problem, planned)
        shares, winners = allocate_shares(problem, choice, helper_of)
        rates = effective_rates(problem, helper_of, np.nan_to_num(shares))
        instance, plan = _sequenced(problem, choice, helper_of, rates, planned.plan.method)
        if best is None or plan.makespan < best.makespan - 1e-9:
            info = {**planned.info, "rounds": done + 1,
                    "shares": {c: None if math.isnan(s) else float(s)
                               for c, s in zip(problem.client_ids, shares, strict=True)},
                    "share_rules": {problem.helper_ids[h]: r for h, r in winners.items()}}
            best = CutPlan(instance, plan, planned.cuts, planned.method, info)
    assert best is not None
    best.plan.solve_time = time.perf_counter() - begin
    return best


def unaware_plan(problem: CutProblem, time_limit: float = 2.0, seed: int = 0) -> CutPlan:
    """The plan of a planner that ignores the shared links (own rates everywhere), run
    with equal shares: the reference :func:`plan_shared_links` is compared with."""
    planned = optimize_cuts(problem, "auto", time_limit=time_limit, seed=seed)
    choice, helper_of = _indexed(problem, planned)
    served = np.bincount(helper_of, minlength=len(problem.helper_ids))
    shares = np.array([1.0 / served[h] for h in helper_of])
    instance, plan = _sequenced(problem, choice, helper_of,
                                effective_rates(problem, helper_of, shares), planned.plan.method)
    return CutPlan(instance, plan, planned.cuts, planned.method, {})
