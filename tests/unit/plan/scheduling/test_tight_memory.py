"""Tight helper memory: every method finds a plan whenever the bodies pack, ``auto`` never
fails where a method succeeds, and a proven impossibility is a clean PlanningError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flsplit.plan import Instance, InstanceError, PlanningError, check_plan, solve
from flsplit.plan.generator import random_instance
from flsplit.plan.instance import STAGE_NAMES

METHODS = ("random-fcfs", "balanced-fcfs", "greedy", "decomposition", "exact")


def packing_exists(body: list[float], capacity: list[float]) -> bool:
    """Brute force (depth first, largest body first): an independent packing check."""
    order = sorted(range(len(body)), key=lambda k: -body[k])
    free = list(capacity)

    def place(i: int) -> bool:
        if i == len(order):
            return True
        need = body[order[i]]
        tried = set()
        for h in range(len(free)):
            if need <= free[h] + 1e-9 and free[h] not in tried:
                tried.add(free[h])  # helpers with equal free room are interchangeable
                free[h] -= need
                if place(i + 1):
                    return True
                free[h] += need
        return False

    return place(0)


def tight(num_clients: int, num_helpers: int, seed: int, factors: list[float],
          shares: list[float], slack: float) -> Instance:
    """``random_instance`` stage times; bodies 100 MiB x factor; helpers hold ``slack`` more
    than all bodies together, split by ``shares``."""
    base = random_instance(num_clients, num_helpers, seed=seed)
    body = np.round(100.0 * np.asarray(factors), 3)
    capacity = np.round((1 + slack) * body.sum() * np.asarray(shares) / sum(shares), 3)
    return Instance(
        client_ids=base.client_ids, helper_ids=base.helper_ids,
        body_memory=body, helper_memory=capacity,
        **{s: base.stage(s) for s in STAGE_NAMES},
    )


def memory_fits(instance: Instance, plan) -> bool:
    used = dict.fromkeys(instance.helper_ids, 0.0)
    for k, client in enumerate(instance.client_ids):
        used[plan.assignment[client]] += instance.body_memory[k]
    return all(used[h] <= instance.helper_memory[j] + 1e-9
               for j, h in enumerate(instance.helper_ids))


@st.composite
def tight_instances(draw) -> Instance:
    num_clients = draw(st.integers(5, 8))
    num_helpers = draw(st.integers(2, 3))
    factors = draw(st.lists(st.floats(0.5, 1.5), min_size=num_clients,
                            max_size=num_clients))
    shares = draw(st.lists(st.floats(0.7, 1.3), min_size=num_helpers,
                           max_size=num_helpers))
    slack = draw(st.floats(0.01, 0.02))
    try:
        return tight(num_clients, num_helpers, draw(st.integers(0, 1000)), factors,
                     shares, slack)
    except InstanceError:  # a body larger than every helper: not a packing question
        assume(False)
        raise


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instance=tight_instances())
def test_every_method_fits_memory_whenever_a_packing_exists(instance: Instance) -> None:
    exists = packing_exists(instance.body_memory.tolist(), instance.helper_memory.tolist())
    succeeded = []
    for method in METHODS:
        try:
            plan = solve(instance, method, time_limit=0.1, seed=0)
        except PlanningError as exc:
            assert not exists, f"{method} found no plan though a packing exists: {exc}"
            continue
        check_plan(instance, plan)
        assert memory_fits(instance, plan)
        succeeded.append(method)
    assert bool(succeeded) == exists
    try:
        plan = solve(instance, "auto", time_limit=0.2, seed=0)
    except PlanningError as exc:
        assert not succeeded, f"auto failed where {succeeded} succeeded: {exc}"
    else:
        assert memory_fits(instance, plan)


def test_preference_that_scatters_the_large_bodies_still_packs() -> None:
    # [5, 5] on one helper and [4, 3, 3] on the other is the only packing; clients 0 and
    # 1 prefer different helpers, so following preferences alone leaves a body out
    base = random_instance(5, 2, seed=3)
    stages = {s: base.stage(s).copy() for s in STAGE_NAMES}
    stages["body_fwd"][0] = [1, 50]
    stages["body_fwd"][1] = [50, 1]
    instance = Instance(client_ids=base.client_ids, helper_ids=base.helper_ids,
                        body_memory=[5, 5, 4, 3, 3], helper_memory=[10, 10], **stages)
    for method in (*METHODS, "auto"):
        plan = solve(instance, method, time_limit=0.2, seed=1)
        assert memory_fits(instance, plan), method


def test_no_packing_is_a_planning_error_that_says_so() -> None:
    base = random_instance(3, 2, seed=0)
    instance = Instance(client_ids=base.client_ids, helper_ids=base.helper_ids,
                        body_memory=[6, 6, 6], helper_memory=[9, 9],
                        **{s: base.stage(s) for s in STAGE_NAMES})
    for method in (*METHODS, "auto"):
        with pytest.raises(PlanningError, match="no packing exists") as info:
            solve(instance, method, time_limit=0.2)
        assert "18 MiB in total" in str(info.value) and getattr(info.value, "proven", True)


def test_auto_goes_on_when_a_method_finds_no_plan(monkeypatch) -> None:
    from flsplit.plan.scheduling import solve as solve_module

    def no_plan(instance, seed=0):
        raise PlanningError("helper_memory", "random assignment found nothing")

    monkeypatch.setattr(solve_module, "random_fcfs", no_plan)
    instance = random_instance(4, 2, seed=0)
    plan = solve(instance, "auto", time_limit=0.2)
    check_plan(instance, plan)
    assert plan.info["failed"] == ["random-fcfs: helper_memory: random assignment found nothing"]


def test_a_packer_time_out_is_not_reported_as_proof(monkeypatch) -> None:
    from ortools.sat.python import cp_model

    from flsplit.plan.scheduling import packing

    monkeypatch.setattr(packing, "_cpsat", lambda *a, **k: (None, cp_model.UNKNOWN))
    with pytest.raises(packing.PackingError, match=r"timed out after 0\.5 s") as info:
        packing.pack_memory(np.array([6.0, 6.0, 6.0]), np.array([9.0, 9.0]), time_limit=0.5)
    assert not info.value.proven
    monkeypatch.undo()
    with pytest.raises(packing.PackingError, match="CP-SAT proved it") as info:
        packing.pack_memory(np.array([6.0, 6.0, 6.0]), np.array([9.0, 9.0]))
    assert info.value.proven
