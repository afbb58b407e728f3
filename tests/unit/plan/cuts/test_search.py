"""Local search over cut pairs and helpers (flsplit.plan.cuts.search)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import flsplit.plan.cuts.optimize as cuts_module
from flsplit.plan.cuts.optimize import optimize_cuts
from flsplit.plan.cuts.plan import plan_from_indices
from flsplit.plan.cuts.repick import state_from_plan
from flsplit.plan.cuts.search import anneal, neighbour_pairs
from flsplit.plan.evaluator import evaluate
from tests.unit.plan.cuts.test_optimize import _check_joint_plan, random_problem


def _problem(seed: int, num_clients: int, num_helpers: int, num_pairs: int):
    """Random problem whose memory lets each helper hold its even share of the largest
    bodies, and no more: always plannable, and binding for moves."""
    problem = random_problem(seed, num_clients, num_helpers, num_pairs)
    share = -(-num_clients // num_helpers)
    problem.helper_memory = np.full(num_helpers, problem.body_memory.max() * share)
    return problem


def _start(problem):
    result = optimize_cuts(problem, "alternating", time_limit=0.2, seed=0)
    choice = np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids])
    return state_from_plan(problem, choice, result.plan)


@pytest.mark.parametrize("seed", range(8))
def test_search_keeps_memory_and_never_returns_a_longer_plan(seed: int) -> None:
    problem = _problem(seed, num_clients=7, num_helpers=3, num_pairs=4)
    start = _start(problem)
    found = anneal(problem, start.choice, start.helper_of, time.perf_counter() + 60,
                   orders=start.orders, seed=seed, max_iterations=400)
    assert found.iterations == 400
    assert found.makespan <= start.makespan + 1e-9
    instance = problem.instance(found.choice)  # raises if a client cannot hold its pair
    plan = plan_from_indices(instance, found.helper_of, found.orders, "search")
    assert evaluate(instance, plan).makespan == pytest.approx(found.makespan)
    used = np.zeros(problem.shape[1])
    np.add.at(used, found.helper_of, problem.body_memory[found.choice])
    assert (used <= problem.helper_memory + 1e-9).all()
    usable = problem.usable()
    pairs = zip(found.helper_of, found.choice, strict=True)
    assert all(usable[k, h, q] for k, (h, q) in enumerate(pairs))


def test_search_never_overfills_a_fast_helper_it_would_like_to_crowd() -> None:
    problem = _problem(2, num_clients=8, num_helpers=3, num_pairs=4)
    for stage in ("body_fwd", "body_bwd"):
        problem.stages[stage][:, 0, :] *= 0.05  # helper 0 is twenty times faster
    problem.helper_memory[0] = 2 * problem.body_memory.max()
    problem.helper_memory[1:] = 8 * problem.body_memory.max()
    start = _start(problem)
    found = anneal(problem, start.choice, start.helper_of, time.perf_counter() + 60,
                   orders=start.orders, seed=0, max_iterations=2000)
    on_fast = [k for k, h in enumerate(found.helper_of) if h == 0]
    assert on_fast, "the search should use the fast helper"
    assert problem.body_memory[found.choice[on_fast]].sum() <= problem.helper_memory[0] + 1e-9


def test_search_with_a_seed_and_an_iteration_cap_is_reproducible() -> None:
    problem = _problem(11, num_clients=8, num_helpers=3, num_pairs=5)
    start = _start(problem)
    runs = [anneal(problem, start.choice, start.helper_of, time.perf_counter() + 60,
                   orders=start.orders, seed=3, max_iterations=300) for _ in range(2)]
    assert runs[0].makespan == runs[1].makespan
    assert (runs[0].choice == runs[1].choice).all() and runs[0].orders == runs[1].orders


def test_neighbour_pairs_move_each_cut_at_most_one_candidate() -> None:
    problem = random_problem(0, num_clients=2, num_helpers=1, num_pairs=3)
    problem.pairs = np.array([(a, b) for a in (1, 2, 4) for b in (3, 5, 6) if a < b])
    near = neighbour_pairs(problem)
    firsts, seconds = [1, 2, 4], [3, 5, 6]
    for i, (a, b) in enumerate(problem.pairs):
        assert i not in near[i]
        for j in near[i]:
            c, d = problem.pairs[j]
            assert abs(firsts.index(c) - firsts.index(a)) <= 1
            assert abs(seconds.index(d) - seconds.index(b)) <= 1
            assert i in near[j]
    index = {tuple(p): i for i, p in enumerate(problem.pairs.tolist())}
    assert sorted(near[index[(2, 5)]]) == sorted(
        index[p] for p in [(1, 3), (1, 5), (1, 6), (2, 3), (2, 6), (4, 5), (4, 6)])


def test_auto_spends_time_beyond_its_phases_on_the_search(monkeypatch) -> None:
    monkeypatch.setattr(cuts_module, "AUTO_PHASED_SECONDS", 0.3)
    problem = _problem(5, num_clients=10, num_helpers=3, num_pairs=5)
    result = optimize_cuts(problem, "auto", time_limit=0.8, seed=0)
    _check_joint_plan(problem, result)
    search = result.info["search"]
    assert search["iterations"] > 0
    assert result.makespan <= search["start_makespan"] + 1e-9
    short = optimize_cuts(problem, "auto", time_limit=0.3, seed=0)
    assert "search" not in short.info
