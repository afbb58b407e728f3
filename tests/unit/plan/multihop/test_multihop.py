"""Multi-hop placement: exact against brute force, memory respected, clear errors."""

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flsplit.plan.multihop import (
    MultihopError,
    MultihopProblem,
    Stage,
    best_micro_batch,
    brute_force,
    evaluate_placement,
    load_problem,
    optimize_placement,
    pipeline_latency,
    place,
    placement_stages,
    problem_from_dict,
    random_problem,
)
from tests.paths import SHARED_PROFILES

PROFILES = SHARED_PROFILES


@st.composite
def small_problems(draw):
    layers = draw(st.integers(3, 7))
    helpers = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 10_000))
    batch = draw(st.integers(1, 48))
    problem = random_problem(
        layers, helpers, seed=seed, batch_size=batch,
        memory_slack=draw(st.floats(0.2, 2.0)), link_probability=draw(st.floats(0.0, 1.0)),
    )
    if draw(st.booleans()):  # no per-micro-batch overheads: ties and zero a
        problem.overhead_ms[:] = 0.0
    if draw(st.booleans()):
        problem.min_head = draw(st.integers(1, max(1, layers - 2)))
        problem.min_tail = draw(st.integers(1, max(1, layers - problem.min_head - 1)))
    if draw(st.booleans()):  # coded links: each hop its own bytes per raw byte
        ratio = np.random.default_rng(seed).uniform(0.05, 2.0, (helpers + 1,) * 2)
        problem.byte_ratio = (ratio + ratio.T) / 2
    if draw(st.booleans()):  # fixed time per call: every micro-batch pays its layers'
        problem.call_ms = np.random.default_rng(seed + 1).uniform(0.0, 30.0,
                                                                  (helpers + 1, layers))
    problem.duplex = draw(st.booleans())  # each link two stages, out and back
    problem.serial_head = draw(st.booleans())  # the head once per batch, outside
    micro = draw(st.integers(1, batch))
    return problem, micro


@settings(max_examples=300, deadline=None)
@given(small_problems())
def test_placement_equals_brute_force(case):
    problem, micro = case
    expected = brute_force(problem, micro)
    if expected is None:
        with pytest.raises(MultihopError):
            place(problem, micro)
        return
    latency, helpers, cuts, _ = place(problem, micro)
    assert latency == pytest.approx(expected[0], rel=1e-9, abs=1e-9)
    assert evaluate_placement(problem, helpers, cuts, micro) == pytest.approx(latency)


@settings(max_examples=150, deadline=None)
@given(small_problems())
def test_every_placement_respects_memory(case):
    problem, _ = case
    try:
        plan = optimize_placement(problem)
    except MultihopError:
        assert all(brute_force(problem, b) is None for b in {1, problem.batch_size})
        return
    index = {node: i for i, node in enumerate(problem.node_ids)}
    for node, need in plan.memory_mib.items():
        assert need <= problem.memory_mib[index[node]] + 1e-9
    # the head, the helpers' ranges and the tail partition the layers
    ranges = plan.ranges()
    assert ranges[0][1] == 0 and ranges[-1][1] == plan.cuts[-1]
    for (_, _, stop), (_, start, _) in itertools.pairwise(ranges):
        assert stop == start
    # the optimised size is at least as good as no micro-batching and as b = 1
    helpers = [index[n] for n in plan.chain[1:-1]]
    for b in (1, problem.batch_size):
        assert plan.latency_ms <= evaluate_placement(problem, helpers, plan.cuts, b) + 1e-9
    brute = brute_force(problem, plan.micro_batch)
    assert brute is not None and plan.latency_ms == pytest.approx(brute[0], rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 30), st.floats(0, 5)), min_size=1, max_size=7),
    st.integers(1, 400),
)
def test_micro_batch_closed_form(raw, batch):
    stages = [Stage(str(i), a, c) for i, (a, c) in enumerate(raw)]
    b, latency = best_micro_batch(stages, batch)
    assert latency == pytest.approx(pipeline_latency(stages, b, batch))
    for other in (b - 1, b + 1):  # no better integer neighbour
        if 1 <= other <= batch:
            assert latency <= pipeline_latency(stages, other, batch) + 1e-9
    _, exact = best_micro_batch(stages, batch, exact=True)
    assert exact == pytest.approx(min(pipeline_latency(stages, x, batch)
                                      for x in range(1, batch + 1)))
    assert exact <= latency + 1e-9


def test_closed_form_matches_the_formula():
    # one stage with overhead is the bottleneck: b* = sqrt(B a / (C - c)) = 30, M = 3
    stages = [Stage("slow", 10.0, 1.0), Stage("other", 0.0, 1.0)]
    b, _ = best_micro_batch(stages, 90)
    assert b == math.sqrt(90 * 10.0 / 1.0) == 30


def _instance(tmp_path, **changes):
    data = {
        "format": "flsplit-multihop", "version": 1, "name": "vgg",
        "profile": str(PROFILES / "vgg19_cifar10.json"),
        "batch_size": 64,
        "client": {"id": "pi", "device": "rpi4", "memory_mib": 4096, "overhead_ms": 2.0},
        "helpers": [
            {"id": "edge", "device": "laptop", "memory_mib": 2048, "overhead_ms": 1.0},
            {"id": "vm", "device": "vm-8vcpu", "memory_mib": 8192, "overhead_ms": 1.0},
        ],
        "links": [
            {"between": ["pi", "edge"], "rate_mbps": 50, "latency_ms": 2},
            {"between": ["edge", "vm"], "rate_mbps": 500, "latency_ms": 1},
            {"between": ["vm", "pi"], "rate_mbps": 20, "latency_ms": 10},
        ],
    }
    data.update(changes)
    path = tmp_path / "mh.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.skipif(not PROFILES.exists(), reason="shared profiles not present")
def test_instance_file_and_plan(tmp_path):
    problem = load_problem(_instance(tmp_path))
    assert problem.node_ids == ["pi", "edge", "vm"] and problem.num_layers == 25
    plan = optimize_placement(problem)
    assert plan.chain[0] == plan.chain[-1] == "pi"
    assert len(plan.cuts) == len(plan.chain) - 1
    stages, memory = placement_stages(
        problem, [problem.node_ids.index(n) for n in plan.chain[1:-1]], plan.cuts)
    assert plan.latency_ms == pytest.approx(
        pipeline_latency(stages, plan.micro_batch, problem.batch_size))
    assert memory == plan.memory_mib
    assert plan.to_dict()["format"] == "flsplit-multihop-plan"


@pytest.mark.skipif(not PROFILES.exists(), reason="shared profiles not present")
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"client": {"id": "pi", "device": "rpi4", "memory_mib": 1}}, "client.memory_mib"),
        ({"client": {"id": "pi", "device": "rpi4", "memory_mib": 700},
          "helpers": [{"id": "edge", "device": "laptop", "memory_mib": 10},
                      {"id": "vm", "device": "vm-8vcpu", "memory_mib": 20}]},
         "helpers[*].memory_mib"),
        ({"links": [{"between": ["edge", "vm"], "rate_mbps": 5}]}, "links"),
        ({"links": [{"between": ["pi", "edge"], "rate_mbps": -1}]}, "links[0].rate_mbps"),
        ({"links": [{"between": ["pi", "nowhere"], "rate_mbps": 1}]}, "links[0].between"),
        ({"helpers": [{"id": "x", "device": "toaster", "memory_mib": 10}]},
         "helpers[0].device"),
        ({"helpers": [{"id": "x", "device": "laptop"}, {"id": "x", "device": "laptop"}]},
         "helpers[1].id"),
        ({"batch_size": 0}, "batch_size"),
        ({"micro_batch": 65}, "micro_batch"),
        ({"version": 2}, "version"),
        ({"profile": "missing.json"}, "profile"),
    ],
)
def test_errors_name_the_field(tmp_path, changes, field):
    with pytest.raises(MultihopError) as err:
        problem = load_problem(_instance(tmp_path, **changes))
        optimize_placement(problem)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_problem_from_dict_inline_profile():
    profile = {
        "layers": [{"activation_kib": 100.0, "weights_kib": 10.0} for _ in range(4)],
        "devices": {"dev": {"forward_ms": [1.0] * 4, "backward_ms": [2.0] * 4,
                            "update_ms": [0.0] * 4}},
    }
    data = {
        "profile": profile, "batch_size": 8,
        "client": {"id": "c", "device": "dev", "memory_mib": 100},
        "helpers": [{"id": "h", "device": "dev", "memory_mib": 100, "speed_factor": 0.5}],
        "default_link": {"rate_mbps": 10.0},
    }
    problem = problem_from_dict(data)
    assert isinstance(problem, MultihopProblem)
    np.testing.assert_allclose(problem.sample_ms[1], problem.sample_ms[0] * 0.5)
    plan = optimize_placement(problem, micro_batch=2)
    assert plan.micro_batch == 2 and plan.num_micro_batches == 4


@pytest.mark.skipif(not PROFILES.exists(), reason="shared profiles not present")
def test_plan_command_multihop(tmp_path, capsys):
    from flsplit.cli import main

    instance = _instance(tmp_path)
    out = tmp_path / "plan.json"
    assert main(["plan", "--multihop", str(instance), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chain        pi -> " in printed and "micro-batch" in printed
    saved = json.loads(out.read_text())
    assert saved["format"] == "flsplit-multihop-plan" and saved["chain"][0] == "pi"
    assert main(["plan", "--multihop", str(instance), "--micro-batch", "64"]) == 0
    assert "(1 micro-batches)  (fixed)" in capsys.readouterr().out
    bad = _instance(tmp_path, links=[{"between": ["pi", "edge"], "rate_mbps": 0}])
    assert main(["plan", "--multihop", str(bad)]) == 2
    assert "links[0].rate_mbps: expected a positive number" in capsys.readouterr().err


def test_bench_placement_quick(capsys):
    from benchmarks.placement import main

    assert main(["--layers", "12", "--helpers", "3", "--seeds", "1", "--brute-force", "20",
                 "--profiles", "/nonexistent"]) == 0
    printed = capsys.readouterr().out
    assert "brute force: 20/20" in printed and "synthetic L=12 H=3" in printed


def test_fixed_time_per_call_is_paid_per_micro_batch_and_by_the_head_once_per_batch():
    problem = random_problem(5, 2, seed=5, batch_size=32)
    problem.call_ms = np.arange(15, dtype=float).reshape(3, 5)
    stages, _ = placement_stages(problem, [1, 2], [1, 3, 4])
    client, first, second = stages[:3]
    call, sample = problem.call_ms, problem.sample_ms
    # the client: head (layer 0) once per batch, spread over its samples; tail per call
    assert client.a == pytest.approx(problem.overhead_ms[0] + call[0, 4])
    assert client.c == pytest.approx(sample[0, [0, 4]].sum() + call[0, 0] / 32)
    assert first.a == pytest.approx(problem.overhead_ms[1] + call[1, 1:3].sum())
    assert first.c == pytest.approx(sample[1, 1:3].sum())
    assert second.a == pytest.approx(problem.overhead_ms[2] + call[2, 3])
    # one batch in 8 micro-batches: the head's call once, the tail's 8 times
    assert 8 * client.time(4) == pytest.approx(
        8 * problem.overhead_ms[0] + 32 * sample[0, [0, 4]].sum() + call[0, 0] + 8 * call[0, 4])


def test_fixed_time_per_call_makes_the_placement_cut_fewer_micro_batches():
    # without fixed costs per call every size pays only per sample and the pipeline wants
    # micro-batches of one sample; 100 ms per call of every layer makes 32 calls too dear
    problem = random_problem(5, 2, seed=5, batch_size=32)
    problem.overhead_ms[:] = 0.0
    free = optimize_placement(problem)
    problem.call_ms = np.full((3, 5), 100.0)
    costly = optimize_placement(problem)
    assert free.num_micro_batches == 32
    assert costly.num_micro_batches < free.num_micro_batches
    helpers = [problem.node_ids.index(n) for n in costly.chain[1:-1]]
    assert costly.latency_ms == pytest.approx(
        evaluate_placement(problem, helpers, costly.cuts, costly.micro_batch))
    assert costly.latency_ms < evaluate_placement(problem, helpers, costly.cuts, 1)


def test_a_serial_head_is_paid_once_per_batch_outside_the_pipeline():
    # the runtime runs the head once on the whole batch before the micro-batches leave
    # and its backward after they are back: it does not overlap the links
    problem = random_problem(5, 2, seed=5, batch_size=32)
    problem.call_ms = np.full((3, 5), 3.0)
    problem.memory_mib[:] = 1e6
    piped, _ = placement_stages(problem, [1], [2, 4])
    problem.serial_head = True
    serial, _ = placement_stages(problem, [1], [2, 4])
    head = [s for s in serial if s.serial]
    sample = problem.sample_ms[0]
    assert [(s.a, s.c) for s in head] == [(pytest.approx(32 * sample[:2].sum() + 6.0), 0.0)]
    assert serial[0].a == piped[0].a and serial[0].c == pytest.approx(sample[4])
    for b in (1, 4, 32):
        stages = [s for s in serial if not s.serial]
        m = 32 // b
        expected = head[0].a + sum(s.time(b) for s in stages) + (m - 1) * max(
            s.time(b) for s in stages)
        assert pipeline_latency(serial, b, 32) == pytest.approx(expected)
    # one micro-batch: the same latency either way; many: the head no longer overlaps
    assert pipeline_latency(serial, 32, 32) == pytest.approx(pipeline_latency(piped, 32, 32))
    assert pipeline_latency(serial, 1, 32) > pipeline_latency(piped, 1, 32)


@settings(max_examples=150, deadline=None)
@given(small_problems())
def test_placement_with_chains_returning_along_them_is_judged_by_that_model(case):
    # the exact search is of chains returning over their last helper's own link; with
    # return_along it still ends, and what it returns is judged by the model it plans
    problem, micro = case
    problem.return_along = True
    expected = brute_force(problem, micro)
    try:
        latency, helpers, cuts, _ = place(problem, micro)
    except MultihopError:
        return
    assert latency == pytest.approx(evaluate_placement(problem, helpers, cuts, micro))
    assert expected is not None and latency >= expected[0] - 1e-9
