"""Instance builder, scenario family with free cuts, NODES.json and the cut CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flsplit.cli import main as flsplit_main
from flsplit.model.presets import PRESETS
from flsplit.plan.cuts.cli import main as cut_main
from flsplit.plan.cuts.family import family_problem
from flsplit.plan.cuts.nodes import NodesError, problem_from_nodes
from flsplit.plan.cuts.problem import build_instance, build_problem, candidate_pairs
from flsplit.plan.cuts.profiles import layer_profile, node_costs
from flsplit.plan.generator import CUTS, generate_instance, load_profile
from flsplit.plan.instance import STAGE_NAMES, InstanceError
from tests.paths import SHARED_PROFILES

#: 8.192 Mbit/s makes a transfer of x KiB take x ms.
UNIT_RATE = 8.192


def tiny_profile() -> dict:
    """Four layers; ``cli`` is a client device, ``vm-8vcpu`` a helper."""
    return {
        "model": "tiny",
        "layers": [
            {"activation_kib": 100.0, "weights_kib": 1.0},
            {"activation_kib": 50.0, "weights_kib": 2.0},
            {"activation_kib": 20.0, "weights_kib": 3.0},
            {"activation_kib": 10.0, "weights_kib": 4.0},
        ],
        "devices": {
            "cli": {"forward_ms": [1, 2, 3, 4], "backward_ms": [10, 20, 30, 40],
                    "update_ms": [0, 1, 0, 1]},
            "vm-8vcpu": {"forward_ms": [0.1, 0.2, 0.3, 0.4], "backward_ms": [1, 2, 3, 4],
                         "update_ms": [0, 0.5, 0.5, 0]},
        },
    }


def test_stage_times_by_hand() -> None:
    profile = layer_profile(tiny_profile())
    client = node_costs(profile, "cli", memory_mib=1.0)
    helper = node_costs(profile, "vm-8vcpu", memory_mib=1.0)
    instance = build_instance(profile, [client], [helper], np.array([[UNIT_RATE]]), [(1, 3)])
    # head = layer 0, body = layers 1-2, tail = layer 3; tx(100) = 100 ms, tx(20) = 20 ms
    assert instance.head_fwd_up[0, 0] == pytest.approx(1 + 100)
    assert instance.body_fwd[0, 0] == pytest.approx(0.2 + 0.3)
    assert instance.tail_fwd_bwd[0, 0] == pytest.approx(20 + 4 + 40 + 1 + 20)
    assert instance.body_bwd[0, 0] == pytest.approx(2 + 0.5 + 3 + 0.5)
    assert instance.down_head_bwd[0, 0] == pytest.approx(100 + 10 + 0)
    assert instance.body_memory[0] == pytest.approx((3 * (2 + 3) + 50 + 20) / 1024)
    assert instance.meta["cuts"] == {"c0": [1, 3]}
    problem = build_problem(profile, [client], [helper], np.array([[UNIT_RATE]]), [(1, 3)])
    assert problem.client_need[0] == pytest.approx((3 * 1 + 100 + 3 * 4 + 10) / 1024)


def test_rate_scales_transfers() -> None:
    profile = layer_profile(tiny_profile())
    client = node_costs(profile, "cli", memory_mib=1.0)
    helper = node_costs(profile, "vm-8vcpu", memory_mib=1.0)
    fast = build_instance(profile, [client], [helper], np.array([[2 * UNIT_RATE]]), [(2, 3)])
    assert fast.head_fwd_up[0, 0] == pytest.approx(1 + 2 + 50 / 2)


def test_preset_scaled_from_reference_column() -> None:
    profile = layer_profile(tiny_profile())
    costs = node_costs(profile, "rpi4")  # not a column: preset scaled from vm-8vcpu
    rpi4 = PRESETS["rpi4"]
    assert costs.head_fwd[-1] == pytest.approx(1.0 * rpi4.forward)
    assert costs.memory_mib == rpi4.memory_mib
    with pytest.raises(ValueError, match="neither a profile column"):
        node_costs(profile, "toaster")


def test_client_without_memory_for_head_cannot_get_cut() -> None:
    profile = layer_profile(tiny_profile())
    tight = node_costs(profile, "cli", memory_mib=0.02)  # 20 KiB
    helper = node_costs(profile, "vm-8vcpu", memory_mib=1.0)
    problem = build_problem(profile, [tight], [helper], np.array([[UNIT_RATE]]))
    need = problem.client_need
    assert (problem.allowed[0] == (need <= 0.02 + 1e-9)).all()
    assert not problem.allowed[0].all()
    banned = tuple(int(v) for v in problem.pairs[int(np.argmin(problem.allowed[0]))])
    with pytest.raises(InstanceError, match=r"cuts\[0\]"):
        build_instance(profile, [tight], [helper], np.array([[UNIT_RATE]]), [banned])


def test_candidate_pairs_keep_a_tail() -> None:
    pairs = candidate_pairs(4)
    assert {tuple(p) for p in pairs} == {(1, 2), (1, 3), (2, 3)}


@pytest.mark.skipif(not SHARED_PROFILES.exists(), reason="shared profiles not available")
@pytest.mark.parametrize("model", sorted(CUTS))
@pytest.mark.parametrize("heterogeneity", ["low", "high"])
def test_family_reproduces_generator_at_published_cuts(model: str, heterogeneity: str) -> None:
    profile = load_profile(model, SHARED_PROFILES)
    problem = family_problem(model, 12, 3, heterogeneity, 5, profile)
    published = generate_instance(model, 12, 3, heterogeneity, seed=5, profile=profile)
    built = problem.instance(np.full(12, problem.pair_index(CUTS[model])))
    for stage in STAGE_NAMES:
        np.testing.assert_allclose(built.stage(stage), published.stage(stage), rtol=1e-12)
    np.testing.assert_allclose(built.body_memory, published.body_memory, rtol=1e-12)
    np.testing.assert_allclose(built.helper_memory, published.helper_memory, rtol=1e-12)


def nodes_doc() -> dict:
    return {
        "format": "flsplit-nodes", "version": 1, "default_rate_mbps": UNIT_RATE,
        "clients": [{"id": "a", "device": "cli", "memory_mib": 1.0},
                    {"id": "b", "device": "rpi4", "rates_mbps": {"h": 2 * UNIT_RATE}}],
        "helpers": [{"id": "h", "device": "vm-8vcpu", "memory_mib": 1.0},
                    {"id": "g", "device": "laptop", "memory_mib": 1.0}],
        "rates_mbps": {"a": {"g": 1.0}},
    }


def test_nodes_rates_and_devices() -> None:
    problem = problem_from_nodes(nodes_doc(), layer_profile(tiny_profile()))
    p = problem.pair_index((1, 3))
    tx = problem.stages["head_fwd_up"][:, :, p] - np.array([[1.0], [PRESETS["rpi4"].forward
                                                                     * 0.1]])
    np.testing.assert_allclose(tx, [[100, 100 * UNIT_RATE], [50, 100]])
    assert problem.client_ids == ["a", "b"] and problem.helper_ids == ["h", "g"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["clients"][0].__setitem__("device", "toaster"), "clients[0].device"),
        (lambda d: d["clients"][1]["rates_mbps"].__setitem__("x", 3), "clients[1].rates_mbps.x"),
        (lambda d: d["rates_mbps"]["a"].__setitem__("g", -1), "rates_mbps.a.g"),
        (lambda d: d.pop("default_rate_mbps"), "clients[0].rates_mbps.h"),
        (lambda d: d["helpers"][1].__setitem__("id", "h"), "helpers[1].id"),
        (lambda d: d["clients"][0].__setitem__("memory_mib", 0), "clients[0].memory_mib"),
        (lambda d: d.__setitem__("cuts", [[3, 1]]), "cuts[0]"),
        (lambda d: d.__setitem__("version", 7), "version"),
    ],
)
def test_nodes_errors_name_the_field(edit, field: str) -> None:
    doc = nodes_doc()
    edit(doc)
    with pytest.raises(NodesError) as info:
        problem_from_nodes(doc, layer_profile(tiny_profile()))
    assert info.value.field == field


def test_cut_cli_prints_cut_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile_path, nodes_path = tmp_path / "model.json", tmp_path / "nodes.json"
    profile_path.write_text(json.dumps(tiny_profile()))
    nodes_path.write_text(json.dumps(nodes_doc()))
    out, instance_out = tmp_path / "plan.json", tmp_path / "instance.json"
    code = flsplit_main(["plan", "--profiles", str(profile_path), "--nodes", str(nodes_path),
                         "--time-limit", "0.5", "--out", str(out),
                         "--instance-out", str(instance_out)])
    assert code == 0
    text = capsys.readouterr().out
    for word in ("makespan", "lower bound", "gap", "solve time", "clients/helper", "cut1"):
        assert word in text
    plan = json.loads(out.read_text())
    assert set(plan["info"]["cuts"]) == {"a", "b"}
    assert json.loads(instance_out.read_text())["meta"]["cuts"] == plan["info"]["cuts"]


def test_cut_cli_reports_bad_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile_path, nodes_path = tmp_path / "model.json", tmp_path / "nodes.json"
    profile_path.write_text(json.dumps(tiny_profile()))
    doc = nodes_doc()
    doc["clients"][0]["device"] = "toaster"
    nodes_path.write_text(json.dumps(doc))
    assert cut_main(["--profiles", str(profile_path), "--nodes", str(nodes_path)]) == 2
    assert "clients[0].device" in capsys.readouterr().err


def test_plan_cli_wants_an_instance_or_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flsplit_main(["plan"]) == 2
    assert "--nodes" in capsys.readouterr().err
    nodes_path = tmp_path / "nodes.json"
    nodes_path.write_text(json.dumps(nodes_doc()))
    assert flsplit_main(["plan", "x.json", "--nodes", str(nodes_path)]) == 2
    assert "not both" in capsys.readouterr().err
