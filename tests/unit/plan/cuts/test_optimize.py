"""Cut optimizer: feasibility, memory rules, bounds and optimality on tiny problems."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flsplit.plan.cuts.bounds import assignment_bound
from flsplit.plan.cuts.family import family_problem
from flsplit.plan.cuts.optimize import (
    CUT_METHODS,
    best_single_pair,
    fixed_cut_plan,
    joint_bound,
    optimize_cuts,
)
from flsplit.plan.cuts.problem import CutProblem, build_problem
from flsplit.plan.cuts.profiles import layer_profile, node_costs
from flsplit.plan.evaluator import StageTable, evaluate, helper_finish
from flsplit.plan.generator import CUTS, load_profile
from flsplit.plan.instance import STAGE_NAMES, InstanceError
from tests.paths import SHARED_PROFILES


def random_problem(seed: int, num_clients: int, num_helpers: int, num_pairs: int = 3
                   ) -> CutProblem:
    """Integer stage tensors, random client memory rules and binding helper memory."""
    rng = np.random.default_rng(seed)
    shape = (num_clients, num_helpers, num_pairs)
    stages = {s: rng.integers(1 if s in ("body_fwd", "body_bwd") else 0, 12, size=shape)
              .astype(float) for s in STAGE_NAMES}
    allowed = rng.random((num_clients, num_pairs)) < 0.7
    allowed[np.arange(num_clients), rng.integers(0, num_pairs, num_clients)] = True
    body_memory = rng.integers(1, 3, size=num_pairs).astype(float)
    capacity = float(body_memory.max() + rng.integers(0, 3))
    return CutProblem(
        client_ids=[f"c{k}" for k in range(num_clients)],
        helper_ids=[f"h{j}" for j in range(num_helpers)],
        pairs=np.array([(1, 2 + p) for p in range(num_pairs)]),
        stages=stages, body_memory=body_memory, client_need=np.zeros(num_pairs),
        allowed=allowed, helper_memory=np.full(num_helpers, capacity),
    )


def _orders(clients: list[int]) -> list[list[tuple[int, bool]]]:
    tasks = [(k, b) for k in clients for b in (False, True)]
    valid = []
    for perm in itertools.permutations(tasks):
        position = {t: i for i, t in enumerate(perm)}
        if all(position[(k, False)] < position[(k, True)] for k in clients):
            valid.append(list(perm))
    return valid


def brute_force(problem: CutProblem) -> float:
    """Joint optimum by enumerating cut pairs x assignments x orders (evaluator judged)."""
    num_clients, num_helpers, _ = problem.shape
    best = np.inf
    choices = [np.flatnonzero(problem.allowed[k]) for k in range(num_clients)]
    for choice in itertools.product(*choices):
        try:
            instance = problem.instance(np.array(choice))
        except InstanceError:
            continue
        table = StageTable(instance)
        for helper_of in itertools.product(range(num_helpers), repeat=num_clients):
            used = np.zeros(num_helpers)
            np.add.at(used, list(helper_of), instance.body_memory)
            if (used > instance.helper_memory + 1e-9).any():
                continue
            makespan = 0.0
            for h in range(num_helpers):
                members = [k for k in range(num_clients) if helper_of[k] == h]
                if members:
                    makespan = max(makespan, min(helper_finish(table, h, order)
                                                 for order in _orders(members)))
            best = min(best, makespan)
    return best


def _packable(problem: CutProblem) -> bool:
    return np.isfinite(brute_force(problem))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_clients=st.integers(1, 3),
       num_helpers=st.integers(1, 2))
@example(seed=605, num_clients=1, num_helpers=2)  # an unused helper with a long head+tail
def test_exact_joint_optimum_equals_enumeration(seed: int, num_clients: int,
                                                num_helpers: int) -> None:
    problem = random_problem(seed, num_clients, num_helpers)
    optimum = brute_force(problem)
    if not np.isfinite(optimum):
        return  # no cut choice packs into helper memory
    result = optimize_cuts(problem, "auto", time_limit=5.0, seed=0)
    assert result.info["auto_choice"] == "exact"
    assert result.plan.proven_optimal
    assert result.makespan == pytest.approx(optimum, abs=1e-9)
    assert joint_bound(problem) <= optimum + 1e-9
    assert assignment_bound(problem) <= optimum + 1e-9
    for method in ("integrated", "alternating"):
        heuristic = optimize_cuts(problem, method, time_limit=0.3, seed=0)
        assert heuristic.makespan >= optimum - 1e-9
        evaluate(heuristic.instance, heuristic.plan)


def _check_joint_plan(problem: CutProblem, result) -> None:
    evaluation = evaluate(result.instance, result.plan)  # raises if infeasible
    assert evaluation.makespan == pytest.approx(result.makespan)
    for k, client in enumerate(problem.client_ids):
        p = problem.pair_index(result.cuts[client])
        assert problem.allowed[k, p]
        assert result.instance.meta["cuts"][client] == list(result.cuts[client])
    assert result.plan.lower_bound <= result.makespan + 1e-6


@pytest.mark.parametrize("method", [m for m in CUT_METHODS if m != "exact"])
def test_joint_plans_are_feasible(method: str) -> None:
    profile = layer_profile({
        "model": "toy",
        "layers": [{"activation_kib": a, "weights_kib": w}
                   for a, w in [(400, 1), (300, 50), (200, 80), (100, 200), (50, 300),
                                (20, 500), (10, 10)]],
        "devices": {
            "slow": {"forward_ms": [30, 40, 50, 60, 70, 80, 5],
                     "backward_ms": [60, 80, 100, 120, 140, 160, 5],
                     "update_ms": [0, 1, 1, 2, 3, 5, 0]},
            "fast": {"forward_ms": [1, 2, 3, 4, 5, 6, 1], "backward_ms": [2, 3, 4, 5, 6, 7, 1],
                     "update_ms": [0, 0, 0, 0, 0, 0, 0]},
        },
    })
    rng = np.random.default_rng(3)
    clients = [node_costs(profile, d, memory_mib=m)
               for d, m in [("slow", 4.0), ("fast", 4.0), ("slow", 1.0), ("fast", 0.5)] * 2]
    helpers = [node_costs(profile, "fast", memory_mib=10.0) for _ in range(3)]
    problem = build_problem(profile, clients, helpers, rng.uniform(1, 20, (8, 3)))
    result = optimize_cuts(problem, method, time_limit=0.5, seed=1)
    _check_joint_plan(problem, result)
    # clients 2, 3, 6, 7 have too little memory for most heads/tails: never given them
    assert not problem.allowed[3].all()
    with pytest.raises(InstanceError, match="no single cut pair"):
        best_single_pair(problem, time_limit=0.1)


def test_memory_poor_client_never_gets_a_heavy_cut() -> None:
    problem = random_problem(7, 4, 2, num_pairs=4)
    # make pair 0 by far the best for everybody, but client 0 cannot hold it
    for stage in STAGE_NAMES:
        problem.stages[stage][:, :, 0] = 0.0 if stage not in ("body_fwd", "body_bwd") else 1.0
    problem.allowed[:] = True
    problem.allowed[0, 0] = False
    problem.body_memory[:] = 1.0
    problem.helper_memory[:] = 4.0
    for method in CUT_METHODS:
        result = optimize_cuts(problem, method, time_limit=0.5, seed=0)
        assert result.cuts["c0"] != (1, 2)
        _check_joint_plan(problem, result)


def test_fixed_cut_rejects_a_pair_a_client_cannot_hold() -> None:
    problem = random_problem(1, 3, 2)
    problem.allowed[:, 2] = True
    problem.allowed[1, 2] = False
    with pytest.raises(InstanceError, match=r"cuts\[1\]"):
        fixed_cut_plan(problem, (1, 4), time_limit=0.2)


@pytest.mark.skipif(not SHARED_PROFILES.exists(), reason="shared profiles not available")
def test_joint_never_longer_than_published_on_a_family_instance() -> None:
    profile = load_profile("resnet101", SHARED_PROFILES)
    problem = family_problem("resnet101", 12, 3, "high", 0, profile)
    published = fixed_cut_plan(problem, CUTS["resnet101"], time_limit=0.5)
    single = best_single_pair(problem, time_limit=0.5, screen=3, screen_time=0.05)
    joint = optimize_cuts(problem, "auto", time_limit=1.5)
    _check_joint_plan(problem, joint)
    assert joint.makespan <= published.makespan + 1e-6
    assert single.makespan <= published.makespan * 1.01
    assert joint.plan.solve_time < 3.0


@pytest.mark.skipif(not SHARED_PROFILES.exists(), reason="shared profiles not available")
def test_assignment_bound_is_tighter_with_unequal_helpers_and_still_valid() -> None:
    """The LP over client-to-helper shares sees that slow helpers absorb less work."""
    profile = load_profile("vgg19", SHARED_PROFILES)
    problem = family_problem("vgg19", 50, 5, "high", 0, profile)
    cheap, lp = joint_bound(problem), assignment_bound(problem)
    assert lp > 1.05 * cheap
    result = optimize_cuts(problem, "auto", time_limit=1.0, seed=0)
    assert lp <= result.makespan
