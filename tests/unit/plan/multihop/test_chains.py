"""Multi-client chains: the judge on hand-checked instances, refusals, the lower bound
against every plan and an exhaustive optimum, the planner against its baselines, CLI."""

import itertools
import json
import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flsplit.plan.multihop import MultihopError, MultihopProblem, evaluate_placement
from flsplit.plan.multihop.chain_bound import lower_bound, micro_batch_sizes
from flsplit.plan.multihop.chain_evaluation import all_stages, evaluate_chain, simulate
from flsplit.plan.multihop.chain_planner import (
    greedy_one_hop,
    judge_routes,
    plan_chains,
    round_robin,
)
from flsplit.plan.multihop.chain_problem import (
    ChainPlan,
    ChainProblem,
    ChainRoute,
    random_chain_problem,
)


def _client(cid, helper_rates, batch=2, helper_memory=10.0):
    """3 layers; the client runs layers 0 and 2 (1 ms per sample each), every helper
    layer 1 (3 ms per sample); cuts carry 0.5 KiB per sample each, links at
    2 x 8.192 Mbit/s (1 ms per KiB both ways): the link stage is 1 ms per sample."""
    h = len(helper_rates)
    n = h + 1
    rate = np.zeros((n, n))
    for v in range(1, n):
        rate[0, v] = rate[v, 0] = helper_rates[v - 1]
        for w in range(1, n):
            if v != w:
                rate[v, w] = 2 * 8.192
    sample = np.tile([1.0, 3.0, 1.0], (n, 1))
    sample[0, 1] = 10.0
    return MultihopProblem(
        node_ids=[cid, *(f"h{v}" for v in range(1, n))], sample_ms=sample,
        runnable=np.ones((n, 3), dtype=bool), overhead_ms=np.zeros(n),
        memory_mib=np.r_[100.0, np.full(h, helper_memory)],
        layer_memory_mib=np.ones(3), activation_kib=np.array([0.5, 0.5, 0.0]),
        rate_mbps=rate, latency_ms=np.zeros((n, n)), batch_size=batch)


def _two_clients(helpers=1, helper_memory=10.0, rates=None):
    rates = rates or [2 * 8.192] * helpers
    return ChainProblem([_client("a", rates, helper_memory=helper_memory),
                         _client("b", rates, helper_memory=helper_memory)])


def test_hand_checked_makespan_shared_helper():
    # per micro-batch (b = 1, M = 2): client 2 ms, link 1 ms, helper 3 ms.
    # a: client 0-2, 2-4; link 2-3, 4-5; helper a0 3-6, a1 6-9 (ready 5, free 6)
    # b: link 2-3, 4-5; helper b0 9-12, b1 12-15  -> makespan 15, a finishes at 9
    problem = _two_clients()
    route = ChainRoute((1,), (1, 2), 1)
    plan = ChainPlan([route, route], {1: [(0, 0), (0, 1), (1, 0), (1, 1)]})
    assert evaluate_chain(problem, plan) == pytest.approx(15.0)
    _, finish = simulate(all_stages(problem, plan.routes), plan.orders)
    assert finish == pytest.approx([9.0, 15.0])
    # interleaved: a0 3-6, b0 6-9, a1 9-12, b1 12-15: a now finishes at 12
    plan.orders = {1: [(0, 0), (1, 0), (0, 1), (1, 1)]}
    _, finish = simulate(all_stages(problem, plan.routes), plan.orders)
    assert finish == pytest.approx([12.0, 15.0])


def test_hand_checked_makespan_own_helpers_and_chain():
    problem = _two_clients(helpers=2)
    # each client alone on its helper: 2 + 1 + 3 + (2 - 1) x 3 = 9 (the flow shop formula)
    plan = ChainPlan([ChainRoute((1,), (1, 2), 1), ChainRoute((2,), (1, 2), 1)],
                     {1: [(0, 0), (0, 1)], 2: [(1, 0), (1, 1)]})
    assert evaluate_chain(problem, plan) == pytest.approx(9.0)
    # whole batch (b = 2, M = 1): 4 + 2 + 6 = 12
    plan.routes = [ChainRoute((1,), (1, 2), 2), ChainRoute((2,), (1, 2), 2)]
    plan.orders = {1: [(0, 0)], 2: [(1, 0)]}
    assert evaluate_chain(problem, plan) == pytest.approx(12.0)


def test_infeasible_plans_are_refused():
    route = ChainRoute((1,), (1, 2), 1)
    orders = {1: [(0, 0), (0, 1), (1, 0), (1, 1)]}
    # memory: each body is 1 MiB, the helper holds 1.5 MiB, both clients on it need 2
    with pytest.raises(MultihopError, match="over its clients"):
        evaluate_chain(_two_clients(helper_memory=1.5), ChainPlan([route, route], orders))
    # missing link: no link between the clients and helper 2
    problem = _two_clients(helpers=2, rates=[2 * 8.192, 0.0])
    other = ChainRoute((2,), (1, 2), 1)
    with pytest.raises(MultihopError, match="no link"):
        evaluate_chain(problem, ChainPlan([route, other], {1: orders[1][:2],
                                                            2: [(1, 0), (1, 1)]}))
    # ranges must be contiguous, increasing and leave the client its head and tail
    with pytest.raises(MultihopError, match="cuts"):
        evaluate_chain(problem, ChainPlan([ChainRoute((1,), (0, 2), 1), route], orders))
    # an order missing a task, or with a client's micro-batches out of order
    problem = _two_clients()
    with pytest.raises(MultihopError, match="tasks"):
        evaluate_chain(problem, ChainPlan([route, route], {1: orders[1][:3]}))
    with pytest.raises(MultihopError, match="out of order"):
        evaluate_chain(problem, ChainPlan([route, route],
                                          {1: [(0, 1), (0, 0), (1, 0), (1, 1)]}))


def test_hand_checked_bound():
    # standalone: 2 + 1 + 3 + 3 = 9 (b = 1; b = 2 gives 12); helper load: the client can
    # keep only its head and tail (layer 1 costs it 10 ms per sample, T < 20), so each
    # offloads 2 samples x 3 ms to the one helper: 12 ms, which cannot start before a
    # first sample has passed a client (2 ms) and one cut of its link (0.5 ms): 14.5 ms
    bound = lower_bound(_two_clients())
    assert bound.standalone == pytest.approx([9.0, 9.0])
    assert bound.load == pytest.approx(14.5, rel=1e-5)
    assert bound.value == pytest.approx(14.5, rel=1e-5)
    # the optimum over every placement, micro-batch size and helper order
    assert exhaustive_optimum(_two_clients()) == pytest.approx(15.0)


def _interleavings(sequences):
    """Every merge of the sequences keeping each one's order."""
    if not any(sequences):
        yield []
        return
    for i, seq in enumerate(sequences):
        if seq:
            rest = [*sequences[:i], seq[1:], *sequences[i + 1:]]
            for tail in _interleavings(rest):
                yield [seq[0], *tail]


def _placements(p: MultihopProblem):
    layers, h = p.num_layers, p.num_helpers
    for c1 in range(p.min_head, layers - p.min_tail):
        for c2 in range(c1 + 1, layers - p.min_tail + 1):
            for k in range(1, min(h, c2 - c1) + 1):
                for helpers in itertools.combinations(range(1, h + 1), k):
                    for inner in itertools.combinations(range(c1 + 1, c2), k - 1):
                        for b in micro_batch_sizes(p.batch_size):
                            yield ChainRoute(helpers, (c1, *inner, c2), b)


def exhaustive_optimum(problem: ChainProblem) -> float:
    """Least makespan over every placement of every client and every helper order."""
    best = math.inf
    for routes in itertools.product(*(list(_placements(p)) for p in problem.clients)):
        try:
            stages = all_stages(problem, routes)
        except MultihopError:
            continue
        per_helper = {}
        for k, cs in enumerate(stages):
            for r in cs.resources:
                if r:
                    per_helper.setdefault(r, []).append([(k, m)
                                                         for m in range(cs.micro_batches)])
        helpers = sorted(per_helper)
        for choice in itertools.product(*(list(_interleavings(per_helper[v]))
                                          for v in helpers)):
            try:
                makespan, _ = simulate(stages, dict(zip(helpers, choice, strict=True)))
            except MultihopError:  # deadlock
                continue
            best = min(best, makespan)
    return best


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 2))
def test_bound_below_exhaustive_optimum(seed, helpers):
    problem = random_chain_problem(2, 4, helpers, seed=seed, batch_size=2,
                                   memory_slack=1.0)
    optimum = exhaustive_optimum(problem)
    bound = lower_bound(problem).value
    if math.isinf(optimum):
        return
    assert bound <= optimum * (1 + 1e-9)
    plan = plan_chains(problem, time_limit=0.2)
    assert optimum <= plan.makespan * (1 + 1e-9)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(2, 3),
       st.sampled_from([0.6, 1.0, 1.5]), st.sampled_from([0.3, 1.0]))
def test_planner_never_worse_than_baselines_and_above_bound(seed, clients, helpers, slack,
                                                            links):
    problem = random_chain_problem(clients, 7, helpers, seed=seed, batch_size=8,
                                   memory_slack=slack, link_probability=links)
    try:
        plan = plan_chains(problem, time_limit=0.3, seed=seed)
    except MultihopError:
        assert round_robin(problem) is None and greedy_one_hop(problem) is None
        return
    judged = evaluate_chain(problem, plan)
    assert judged == pytest.approx(plan.makespan)
    for baseline in (round_robin(problem), greedy_one_hop(problem)):
        if baseline is not None:
            assert judged <= evaluate_chain(problem, baseline) + 1e-6
    for value in (plan.info["round_robin_ms"], plan.info["one_hop_ms"]):
        assert value is None or judged <= value + 1e-6
    assert lower_bound(problem).value <= judged * (1 + 1e-9)


def test_one_client_is_the_single_client_pipeline():
    from flsplit.plan.multihop import optimize_placement

    problem = random_chain_problem(1, 8, 3, seed=3, batch_size=16)
    single = optimize_placement(problem.clients[0])
    ids = problem.clients[0].node_ids
    route = ChainRoute(tuple(ids.index(h) for h in single.chain[1:-1]), tuple(single.cuts),
                       single.micro_batch)
    plan = plan_chains(problem, time_limit=0.2)
    from flsplit.plan.multihop.chain_planner import judge_routes

    assert judge_routes(problem, [route]).makespan == pytest.approx(single.latency_ms)
    assert plan.makespan <= single.latency_ms + 1e-6


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_one_client_with_duplex_links_and_calls_is_the_single_client_pipeline(seed):
    # links that send both ways at once, a serial head, a chain's output back along it
    # and fixed times per call: the judge of many
    # clients still equals the single-client pipeline latency for one, on chains too
    from flsplit.plan.multihop import optimize_placement
    from flsplit.plan.multihop.chain_planner import judge_routes

    problem = random_chain_problem(1, 8, 3, seed=seed, batch_size=16)
    p = problem.clients[0]
    p.duplex = True
    p.serial_head = True
    p.return_along = True
    p.call_ms = np.random.default_rng(seed).uniform(0.0, 40.0, p.sample_ms.shape)
    checked = 0
    for helpers, cuts in (((1,), (2, 6)), ((1, 2), (2, 4, 6)), ((1, 2, 3), (1, 3, 5, 7)),
                          ((2,), (1, 7)), ((2, 3), (1, 4, 7))):
        for b in (1, 3, 16):
            try:
                expected = evaluate_placement(p, list(helpers), list(cuts), b)
            except MultihopError:  # memory or links refuse it
                continue
            route = ChainRoute(helpers, cuts, b)
            assert judge_routes(problem, [route]).makespan == pytest.approx(expected)
            checked += 1
    assert checked >= 6
    single = optimize_placement(p)
    ids = p.node_ids
    route = ChainRoute(tuple(ids.index(h) for h in single.chain[1:-1]), tuple(single.cuts),
                       single.micro_batch)
    assert judge_routes(problem, [route]).makespan == pytest.approx(single.latency_ms)


def test_a_chains_output_returns_along_the_chain_over_the_first_helpers_link():
    # as the runtime relays it: the last cut crosses the helper hop back and the
    # client's link to its first helper, at that link's rate; the last helper's own link
    # to the client is not used
    from flsplit.plan.multihop import placement_stages

    p = random_chain_problem(1, 6, 2, seed=0, batch_size=8).clients[0]
    p.memory_mib[:] = 1e6
    p.rate_mbps[0, 2] = p.rate_mbps[2, 0] = 0.0  # no link from the last helper
    with pytest.raises(MultihopError):
        placement_stages(p, [1, 2], [1, 3, 5])
    p.return_along = True
    stages, _ = placement_stages(p, [1, 2], [1, 3, 5])
    links = stages[3:]
    assert [s.name for s in links] == ["link c1-h1", "link h1-h2"]
    act, per = p.activation_kib, 2.0 * 8.192
    assert links[0].a == pytest.approx(4 * p.latency_ms[0, 1])
    assert links[0].c == pytest.approx(per * (act[0] + act[4]) / p.link_rate_mbps[0, 1])
    assert links[1].c == pytest.approx(per * (act[2] + act[4]) / p.link_rate_mbps[1, 2])
    for b in (1, 8):
        route = ChainRoute((1, 2), (1, 3, 5), b)
        problem = ChainProblem([p])
        assert judge_routes(problem, [route]).makespan == pytest.approx(
            evaluate_placement(p, [1, 2], [1, 3, 5], b))
    # one helper: its link carries both cuts either way
    p.rate_mbps[0, 2] = p.rate_mbps[2, 0] = 5.0
    p.latency_ms[0, 2] = p.latency_ms[2, 0] = 1.0
    one = placement_stages(p, [2], [1, 5])[0]
    p.return_along = False
    assert one == placement_stages(p, [2], [1, 5])[0]


def test_a_duplex_link_pipelines_micro_batches_at_one_directions_time():
    # the runtime sends a micro-batch's activation while the previous one's answer comes
    # back: a link-bound client's micro-batches pass at half the link's two-way time
    from flsplit.plan.multihop import pipeline_latency, placement_stages

    p = random_chain_problem(1, 6, 1, seed=0, batch_size=32).clients[0]
    p.sample_ms[:] = 0.0
    p.overhead_ms[:] = 0.0
    simplex, _ = placement_stages(p, [1], [2, 4])
    p.duplex = True
    duplex, _ = placement_stages(p, [1], [2, 4])
    link = simplex[-1]
    assert [(s.a, s.c) for s in duplex[-2:]] == [(link.a / 2, link.c / 2)] * 2
    # one micro-batch crosses both ways in turn; 32 pass at one direction's time each
    assert pipeline_latency(duplex, 32, 32) == pytest.approx(link.time(32))
    assert pipeline_latency(duplex, 1, 32) == pytest.approx(
        link.time(1) + 31 * link.time(1) / 2)
    assert pipeline_latency(simplex, 1, 32) == pytest.approx(32 * link.time(1))


PROFILE = {
    "model": "tiny", "batch_size_inferred": 8,
    "layers": [{"name": f"l{i}", "activation_kib": a, "weights_kib": w}
               for i, (a, w) in enumerate([(64, 4), (128, 40), (128, 40), (32, 40), (8, 4)])],
    "devices": {
        "rpi4": {"forward_ms": [20, 60, 60, 40, 5], "backward_ms": [40, 120, 120, 80, 10],
                 "update_ms": [1, 5, 5, 5, 1]},
        "vm-8vcpu": {"forward_ms": [1, 3, 3, 2, 1], "backward_ms": [2, 6, 6, 4, 1],
                     "update_ms": [0.1, 0.5, 0.5, 0.5, 0.1]},
    },
}


def _cli(argv, capsys):
    from flsplit.cli import main

    code = main(argv)
    return code, capsys.readouterr()


def test_cli_plans_many_clients(tmp_path, capsys):
    data = {
        "format": "flsplit-multihop", "version": 1, "name": "tiny-many",
        "profile": PROFILE, "batch_size": 8,
        "clients": [{"id": f"c{k}", "device": "rpi4", "memory_mib": 64} for k in range(3)],
        "helpers": [{"id": "h1", "device": "vm-8vcpu", "memory_mib": 64},
                    {"id": "h2", "device": "vm-8vcpu", "memory_mib": 64,
                     "speed_factor": 2.0}],
        "links": [{"between": ["h1", "h2"], "rate_mbps": 100}],
        "default_link": {"rate_mbps": 20, "latency_ms": 1},
    }
    path = tmp_path / "many.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "plan.json"
    code, captured = _cli(["plan", "--multihop", str(path), "--time-limit", "0.2",
                           "--out", str(out)], capsys)
    assert code == 0, captured.err
    assert "lower bound" in captured.out and "gap" in captured.out
    saved = json.loads(out.read_text())
    assert saved["format"] == "flsplit-chain-plan"
    assert [c["id"] for c in saved["clients"]] == ["c0", "c1", "c2"]
    assert saved["lower_bound_ms"] <= saved["makespan_ms"] * (1 + 1e-9)
    data["links"].append({"between": ["c9", "h1"], "rate_mbps": 5})
    path.write_text(json.dumps(data))
    code, captured = _cli(["plan", "--multihop", str(path)], capsys)
    assert code == 2 and "links[1].between: unknown node 'c9'" in captured.err


def test_planner_and_bound_import_no_torch():
    import subprocess

    code = ("import sys, flsplit.plan.multihop.chain_cli; "
            "bad = [m for m in ('torch', 'flwr', 'grpc') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def random_chain_routes(seed: int, helpers: int):
    """A random 4-client problem, a random route of ``helpers`` hops per client and their
    stages (``None`` where the routes do not fit the helpers' memory)."""
    problem = random_chain_problem(4, 6, helpers + 1, seed=seed, batch_size=8,
                                   memory_slack=2.0)
    rng = np.random.default_rng(seed)
    routes = []
    for _ in problem.clients:
        hops = sorted(rng.choice(np.arange(1, helpers + 2), size=helpers, replace=False))
        cuts = (1, *range(2, 2 + helpers - 1), 5)
        routes.append(ChainRoute(tuple(int(v) for v in hops), cuts, int(rng.integers(1, 9))))
    try:
        return problem, routes, all_stages(problem, routes)
    except MultihopError:
        return problem, routes, None


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 2), st.booleans())
def test_list_schedule_is_what_the_judge_reproduces(seed, helpers, remaining):
    from flsplit.plan.multihop.chain_evaluation import list_schedule

    _, _, stages = random_chain_routes(seed, helpers)
    if stages is None:
        return
    orders, finish = list_schedule(stages, remaining=remaining)
    assert simulate(stages, orders)[1] == pytest.approx(finish)


def _fast_and_slow_helper(fast_memory):
    """Two clients of :func:`_client` over a fast helper (layer 1 at 1 ms per sample) and a
    slow one (3 ms per sample); each body is layer 1 (1 MiB), batch 8."""
    rates = [2 * 8.192] * 2
    problem = ChainProblem([_client("a", rates, batch=8), _client("b", rates, batch=8)])
    for p in problem.clients:
        p.sample_ms[1, 1] = 1.0
        p.memory_mib[1] = fast_memory
    return problem


def test_memory_load_bound_sees_a_full_fast_helper():
    from flsplit.plan.multihop.chain_bound import load_bound, memory_load_bound

    # the fast helper holds one body: one client's 8 samples x 3 ms run on the slow one,
    # so some helper is busy 24 ms, from 2.5 ms on (a first sample's 2 ms on its client
    # and 0.5 ms for one cut)
    problem = _fast_and_slow_helper(fast_memory=1.0)
    assert memory_load_bound(problem) == pytest.approx(26.5, rel=1e-5)
    assert load_bound(problem) < 24.0 - 1e-6  # the bound without memory does not see it
    bound = lower_bound(problem)
    assert bound.memory_load == pytest.approx(26.5, rel=1e-5)
    assert bound.value <= plan_chains(problem, time_limit=0.2).makespan * (1 + 1e-9)
    # with room for both bodies on the fast helper it is busy 16 ms, less than each
    # client's own pipeline: per micro-batch of b samples its device takes 2b ms, its
    # link b ms and the helper at least b ms; the best is b = 1 (M = 8): 2 + 1 + 1 +
    # 7 x 2 = 18 ms, which the bound now gives
    problem = _fast_and_slow_helper(fast_memory=2.0)
    assert memory_load_bound(problem) == pytest.approx(18.0, rel=1e-5)
    assert memory_load_bound(problem) <= plan_chains(problem, time_limit=0.2).makespan


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 2), st.sampled_from([0.3, 0.5, 1.0]))
def test_memory_load_bound_below_exhaustive_optimum_tight_memory(seed, helpers, slack):
    from flsplit.plan.multihop.chain_bound import memory_load_bound

    problem = random_chain_problem(2, 4, helpers, seed=seed, batch_size=2,
                                   memory_slack=slack)
    optimum = exhaustive_optimum(problem)
    if math.isinf(optimum):
        return
    assert memory_load_bound(problem) <= optimum * (1 + 1e-9)
    plan = plan_chains(problem, time_limit=0.1, seed=seed)
    assert lower_bound(problem).value <= plan.makespan * (1 + 1e-9)


def test_load_balanced_spreads_bodies_and_keeps_what_the_client_can():
    from flsplit.plan.multihop.chain_planner import _client_options, load_balanced

    # two equal helpers, each holding one body: the two clients go to different helpers
    problem = _two_clients(helpers=2, helper_memory=1.0)
    options = [_client_options(p) for p in problem.clients]
    routes = load_balanced(problem, options, limit=100.0, scaled=False)
    assert sorted(r.helpers for r in routes) == [(1,), (2,)]
    assert judge_routes(problem, routes).makespan == pytest.approx(9.0)
    # one helper holding one body cannot take both
    problem = _two_clients(helpers=1, helper_memory=1.0)
    options = [_client_options(p) for p in problem.clients]
    assert load_balanced(problem, options, limit=100.0, scaled=False) is None


def test_load_balanced_splits_a_body_no_helper_can_hold():
    from flsplit.plan.multihop.chain_planner import _client_options, load_balanced

    # one client, 8 layers; it holds only layers 0 and 7, so its body is layers 1-6 (1 MiB
    # each); 3 helpers each holding 2 of them: one or two hops cannot hold the body
    problem = random_chain_problem(1, 8, 3, seed=5, batch_size=8)
    p = problem.clients[0]
    p.layer_memory_mib[:] = 1.0
    p.memory_mib[0] = 2.0
    p.memory_mib[1:] = 2.0
    options = [_client_options(p)]
    assert list(zip(options[0][0], options[0][1], strict=True)) == [(1, 7)]
    limit = 1e9  # no client or link time limit
    assert load_balanced(problem, options, limit, scaled=False) is None
    routes = load_balanced(problem, options, limit, scaled=False, chains=True)
    assert routes is not None and len(routes[0].helpers) == 3
    plan = judge_routes(problem, routes)
    assert plan is not None and evaluate_chain(problem, plan) == pytest.approx(plan.makespan)


def test_local_search_breaks_makespan_ties_by_the_other_finishes():
    from flsplit.plan.multihop.chain_planner import _better

    plan = ChainPlan([], {}, makespan=10.0, info={"spread": 150.0})
    same_makespan_earlier_others = ChainPlan([], {}, makespan=10.0, info={"spread": 120.0})
    assert _better(same_makespan_earlier_others, plan)
    assert not _better(plan, same_makespan_earlier_others)
    assert not _better(ChainPlan([], {}, makespan=10.5, info={"spread": 1.0}), plan)
    assert _better(ChainPlan([], {}, makespan=9.5, info={"spread": 999.0}), plan)


def _one_fast_link(clients=3, batch=4):
    """Clients of :func:`_client` (batch 4) over two helpers; every client's link to
    helper 1 is 100 times slower (50 ms per sample and cut), to helper 2 as before."""
    rates = [2 * 8.192 / 100, 2 * 8.192]
    return ChainProblem([_client(f"c{k}", rates, batch=batch) for k in range(clients)])


def test_route_ends_and_release_bound_a_client_with_one_usable_first_helper():
    from flsplit.plan.multihop.chain_bound import earliest_helper_start, memory_load_bound

    problem = _one_fast_link()
    # a body on helper 1 needs its link for 4 x 50 ms = 200 ms at least; on helper 2
    # every body (4 samples x 3 ms) makes it busy 36 ms, from the first micro-batch's
    # arrival at 2.5 ms on (one sample: 2 ms on the client, 0.5 ms for cut 1) at the
    # earliest: the bound is 38.5 ms. Spreading the bodies over both helpers (18 ms)
    # is what the relaxation without route ends allowed.
    assert earliest_helper_start(problem) == pytest.approx(2.5)
    assert memory_load_bound(problem) == pytest.approx(38.5, rel=1e-5)
    bound = lower_bound(problem)
    assert bound.value == pytest.approx(38.5, rel=1e-5)
    # the optimum: every body on helper 2 at b = 1; its first task starts at 3 (2 ms on
    # the client, 1 ms on the link carrying both cuts), then 36 ms of work back to back
    plan = plan_chains(problem, time_limit=0.3)
    assert all(r.helpers == (2,) for r in plan.routes)
    assert plan.makespan == pytest.approx(39.0)
    assert bound.value <= plan.makespan
    small = _one_fast_link(clients=2, batch=2)
    assert lower_bound(small).value == pytest.approx(14.5, rel=1e-5)
    assert exhaustive_optimum(small) == pytest.approx(15.0)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 2), st.sampled_from([0.5, 1.0]),
       st.lists(st.sampled_from([1.0, 0.02]), min_size=4, max_size=4))
def test_memory_load_bound_below_exhaustive_optimum_slow_links(seed, helpers, slack, slow):
    from flsplit.plan.multihop.chain_bound import memory_load_bound

    # some client-helper links 50 times slower: route ends and release must stay below
    # the optimum over every placement and helper order
    problem = random_chain_problem(2, 4, helpers, seed=seed, batch_size=2,
                                   memory_slack=slack)
    for k, p in enumerate(problem.clients):
        for h in range(1, helpers + 1):
            p.rate_mbps[0, h] *= slow[2 * k + h - 1]
            p.rate_mbps[h, 0] = p.rate_mbps[0, h]
    optimum = exhaustive_optimum(problem)
    if math.isinf(optimum):
        return
    assert memory_load_bound(problem) <= optimum * (1 + 1e-9)
    assert lower_bound(problem).value <= optimum * (1 + 1e-9)


def test_priced_routes_follow_the_prices_and_the_links():
    from flsplit.plan.multihop.chain_columns import price_routes

    problem = _two_clients(helpers=2)
    p = problem.clients[0]
    options = np.array([[1, 2]])
    hop = np.zeros(2)
    # helper 1 priced, helper 2 free: the body goes to helper 2, and the other way round
    (route,), = price_routes([p], [options], np.array([1.0, 0.0]), np.zeros(2), hop)
    assert route[1:] == ((2,), (1, 2))
    (route,), = price_routes([p], [options], np.array([0.0, 1.0]), np.zeros(2), hop)
    assert route[1:] == ((1,), (1, 2)) and route[0] == pytest.approx(0.0)
    # memory priced: the cost is the layer's 1 MiB at helper 2's price
    (route,), = price_routes([p], [options], np.array([0.0, 0.0]), np.array([5.0, 1.0]),
                             hop)
    assert route == (pytest.approx(1.0), (2,), (1, 2))
    # helper 1's link too slow for the limit: helper 2 whatever the prices
    slow = _one_fast_link(clients=1).clients[0]
    (route,), = price_routes([slow], [options], np.array([0.0, 1.0]), np.zeros(2), hop,
                             link_limit=100.0)
    assert route[1:] == ((2,), (1, 2))


def test_column_routes_balance_the_helpers_within_memory():
    from flsplit.plan.multihop.chain_columns import column_routes

    # the fast helper holds one body: one client on each helper
    problem = _fast_and_slow_helper(fast_memory=1.0)
    options = [np.array([[1, 2]])] * 2
    routes = column_routes(problem, options, limit=1e9, seeds=[], deadline=math.inf)
    assert sorted(r[0] for r in routes) == [(1,), (2,)]
    # room for both on the fast helper: both there (8 samples x 1 ms each beats the
    # slow helper's 24 ms)
    problem = _fast_and_slow_helper(fast_memory=2.0)
    routes = column_routes(problem, options, limit=1e9, seeds=[], deadline=math.inf)
    assert [r[0] for r in routes] == [(1,), (1,)]


def _stages(times, resources, micro_batches=1):
    from flsplit.plan.multihop.chain_evaluation import ClientStages

    return ClientStages([float(t) for t in times], list(resources), micro_batches, {})


def test_reweighted_schedule_lets_the_client_finishing_last_go_first():
    import random

    from flsplit.plan.multihop.chain_evaluation import list_schedule
    from flsplit.plan.multihop.chain_planner import reweighted_schedule

    # helper 2 serves three clients, one micro-batch each. c (helper 1 for 1 ms first)
    # reaches it at 2 and runs 2-6; a (3 ms, then 2 ms on its link) and b (6 ms, then
    # 1 ms) both arrive at 5. Both list rules run b first at 6 (more time ahead, 7 ms
    # against 5; more work): b ends 13, a runs 12-15 and ends 17. a first: a ends 11,
    # b runs 9-15 and ends 16, the best of every order on helper 2.
    stages = [_stages([3, 2, 3, 2], [0, 0, 2, 0]), _stages([4, 1, 6, 1], [0, 0, 2, 0]),
              _stages([0, 0, 1, 1, 4, 4], [0, 0, 1, 0, 2, 0])]
    for remaining in (False, True):
        assert max(list_schedule(stages, remaining=remaining)[1]) == pytest.approx(17.0)
    best = min(simulate(stages, {1: [(2, 0)], 2: list(order)})[0]
               for order in itertools.permutations([(0, 0), (1, 0), (2, 0)]))
    assert best == pytest.approx(16.0)
    orders, finish, weight = reweighted_schedule(stages, math.inf, random.Random(0))
    assert max(finish) == pytest.approx(best)
    assert simulate(stages, orders)[1] == pytest.approx(finish)
    assert weight[0] > weight[1]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 2))
def test_reweighted_schedule_is_judged_and_no_worse_than_the_list_schedule(seed, helpers):
    import random

    from flsplit.plan.multihop.chain_evaluation import list_schedule
    from flsplit.plan.multihop.chain_planner import reschedule, reweighted_schedule

    problem, routes, stages = random_chain_routes(seed, helpers)
    if stages is None:
        return
    orders, finish, _ = reweighted_schedule(stages, math.inf, random.Random(seed), rounds=30)
    assert simulate(stages, orders)[1] == pytest.approx(finish)
    assert max(finish) <= max(list_schedule(stages, remaining=True)[1]) + 1e-9
    plan = judge_routes(problem, routes, final=True)
    better = reschedule(problem, plan, math.inf, random.Random(seed))
    assert evaluate_chain(problem, better) == pytest.approx(better.makespan)
    assert better.makespan <= plan.makespan + 1e-9
    assert lower_bound(problem).value <= better.makespan * (1 + 1e-9)
