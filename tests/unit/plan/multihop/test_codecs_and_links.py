"""Multi-hop instances charge each hop the bytes its codecs send, and use only the
helper-helper links every declaring helper allows."""

import itertools

import numpy as np
import pytest

from flsplit.plan.multihop import MultihopError
from flsplit.plan.multihop.chain_bound import lower_bound
from flsplit.plan.multihop.chain_evaluation import evaluate_chain
from flsplit.plan.multihop.chain_files import chain_problem_from_dict
from flsplit.plan.multihop.chain_planner import plan_chains
from flsplit.plan.multihop.evaluation import evaluate_placement, placement_stages
from flsplit.plan.multihop.files import problem_from_dict
from flsplit.plan.multihop.optimize import optimize_placement
from flsplit.plan.multihop.placement import brute_force, place

PROFILE = {
    "layers": [{"activation_kib": 400.0, "weights_kib": 10.0} for _ in range(5)],
    "devices": {"dev": {"forward_ms": [1.0] * 5, "backward_ms": [2.0] * 5,
                        "update_ms": [0.0] * 5}},
}


def _instance(**changes):
    data = {
        "profile": PROFILE, "batch_size": 8,
        "client": {"id": "c", "device": "dev", "memory_mib": 100, "speed_factor": 4.0},
        "helpers": [{"id": f"h{i}", "device": "dev", "memory_mib": 100} for i in (1, 2, 3)],
        "default_link": {"rate_mbps": 10.0},
    }
    data.update(changes)
    return data


def _links(problem, helpers, cuts):
    stages, _ = placement_stages(problem, helpers, cuts)
    return {s.name: s for s in stages if s.name.startswith("link")}


def test_int8_both_ways_charges_every_hop_a_quarter_of_the_raw_transfer():
    raw = problem_from_dict(_instance())
    coded = problem_from_dict(_instance(compress_activations="int8",
                                        compress_gradients="int8"))
    for helpers, cuts in (([1], [1, 4]), ([1, 3], [1, 2, 4]), ([1, 2, 3], [1, 2, 3, 4])):
        before, after = _links(raw, helpers, cuts), _links(coded, helpers, cuts)
        assert before.keys() == after.keys()
        for name, stage in before.items():
            assert after[name].c == pytest.approx(stage.c / 4)
            assert after[name].a == stage.a  # latency is not coded
    # the plan sees the cheaper links: never slower, and the judge agrees
    assert optimize_placement(coded).latency_ms < optimize_placement(raw).latency_ms


def test_each_direction_and_a_helpers_own_next_hop_codec():
    problem = problem_from_dict(_instance(
        compress_activations="fp16", compress_gradients="int8",
        helpers=[{"id": "h1", "device": "dev", "memory_mib": 100,
                  "compress_activations": "none", "compress_gradients": "none"},
                 {"id": "h2", "device": "dev", "memory_mib": 100},
                 {"id": "h3", "device": "dev", "memory_mib": 100}]))
    raw = problem_from_dict(_instance())
    before, after = _links(raw, [1, 2, 3], [1, 2, 3, 4]), _links(problem, [1, 2, 3],
                                                                  [1, 2, 3, 4])
    ratio = {name: after[name].c / before[name].c for name in before}
    # the client's link: activations at half, gradients at a quarter
    assert ratio["link c-h1"] == pytest.approx((0.5 + 0.25) / 2)
    assert ratio["link c-h3"] == pytest.approx((0.5 + 0.25) / 2)
    # h1 relays raw (its node's own codecs); h2 has none of its own: the client's
    assert ratio["link h1-h2"] == pytest.approx(1.0)
    assert ratio["link h2-h3"] == pytest.approx((0.5 + 0.25) / 2)
    # a client's own codec over the instance's
    own = problem_from_dict(_instance(
        compress_activations="int8", compress_gradients="int8",
        client={"id": "c", "device": "dev", "memory_mib": 100, "compress_gradients": "none"}))
    assert own.byte_ratio[0, 1] == pytest.approx((0.25 + 1.0) / 2)


def test_codec_spellings_are_checked_naming_the_field():
    with pytest.raises(MultihopError, match=r"helpers\[1\]\.compress_gradients"):
        problem_from_dict(_instance(helpers=[
            {"id": "h1", "device": "dev", "memory_mib": 100},
            {"id": "h2", "device": "dev", "memory_mib": 100, "compress_gradients": "int4"}]))


def test_a_helpers_declared_links_remove_the_others_and_no_route_uses_them():
    """h1 declares it reaches only h3: h1-h2 is gone even though the default link would
    give it; h2 declares nothing, so h2-h3 stays."""
    data = _instance(helpers=[
        {"id": "h1", "device": "dev", "memory_mib": 100, "helper_links": ["h3"]},
        {"id": "h2", "device": "dev", "memory_mib": 100},
        {"id": "h3", "device": "dev", "memory_mib": 100}])
    problem = problem_from_dict(data)
    assert problem.rate_mbps[1, 2] == problem.rate_mbps[2, 1] == 0
    assert problem.rate_mbps[1, 3] > 0 and problem.rate_mbps[2, 3] > 0
    with pytest.raises(MultihopError, match="no link 'h1' - 'h2'"):
        evaluate_placement(problem, [1, 2], [1, 2, 4], 1)
    # every placement found (exact and brute force) uses existing links only
    for b in (1, 2, 8):
        for found in (place(problem, b), brute_force(problem, b)):
            helpers = found[1]
            for u, w in itertools.pairwise([0, *helpers, 0]):
                assert problem.rate_mbps[u, w] > 0
    # a helper's declaration cannot add a link the instance does not have
    sparse = problem_from_dict({**_instance(helpers=[
        {"id": "h1", "device": "dev", "memory_mib": 100, "helper_links": ["h2", "h3"]},
        {"id": "h2", "device": "dev", "memory_mib": 100},
        {"id": "h3", "device": "dev", "memory_mib": 100}]), "default_link": None,
        "links": [{"between": ["c", f"h{i}"], "rate_mbps": 10.0} for i in (1, 2, 3)]})
    assert not (sparse.rate_mbps[1:, 1:] > 0).any()
    with pytest.raises(MultihopError, match=r"helpers\[0\]\.helper_links"):
        problem_from_dict(_instance(helpers=[
            {"id": "h1", "device": "dev", "memory_mib": 100, "helper_links": ["nope"]}]))


def test_many_clients_routes_never_use_a_missing_link_and_each_client_its_codec():
    """Clients that hold one layer at each end, helpers two of the three body layers:
    every client needs a chain; h1 and h2 declare no link between them, so no chain
    goes from one to the other."""
    small = [{"id": f"h{i}", "device": "dev", "memory_mib": 0.9} for i in (1, 2, 3, 4)]
    small[0]["helper_links"] = ["h3", "h4"]
    small[1]["helper_links"] = ["h3", "h4"]
    data = _instance(helpers=small, clients=[
        {"id": "a", "device": "dev", "memory_mib": 0.9, "speed_factor": 4.0},
        {"id": "b", "device": "dev", "memory_mib": 0.9, "speed_factor": 4.0,
         "compress_activations": "int8", "compress_gradients": "int8"}])
    del data["client"]
    problem = chain_problem_from_dict(data)
    a, b = problem.clients
    np.testing.assert_allclose(a.byte_ratio, 1.0)
    np.testing.assert_allclose(b.byte_ratio, 0.25)
    plan = plan_chains(problem, time_limit=0.3, seed=0)
    assert evaluate_chain(problem, plan) == pytest.approx(plan.makespan)
    assert lower_bound(problem).value <= plan.makespan * (1 + 1e-9)
    for route in plan.routes:
        assert len(route.helpers) >= 2
        assert (1, 2) not in itertools.pairwise(route.helpers)
