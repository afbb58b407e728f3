"""Shares of a helper's link: rates, share rules, allocation and the alternating plan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flsplit.cli import main as flsplit_main
from flsplit.plan.cuts.links import (
    allocate_shares,
    effective_rates,
    plan_shared_links,
    rule_shares,
    transfer_volume,
    unaware_plan,
)
from flsplit.plan.cuts.nodes import NodesError, problem_from_nodes
from flsplit.plan.cuts.problem import build_problem
from flsplit.plan.cuts.profiles import layer_profile, node_costs
from flsplit.plan.evaluator import StageTable, evaluate
from flsplit.plan.instance import STAGE_NAMES
from flsplit.plan.scheduling.sequencing import best_list_schedule
from tests.unit.plan.cuts.test_problem import UNIT_RATE, nodes_doc, tiny_profile


def shared_problem(link_mbps: float, num_clients: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    profile = layer_profile(tiny_profile())
    clients = [node_costs(profile, "cli", memory_mib=1.0) for _ in range(num_clients)]
    helpers = [node_costs(profile, "vm-8vcpu", memory_mib=1.0) for _ in range(2)]
    rates = rng.uniform(0.5, 3.0, size=(num_clients, 2)) * UNIT_RATE
    return build_problem(profile, clients, helpers, rates, link_mbps=[link_mbps, math.inf])


def test_with_rates_equals_building_at_those_rates() -> None:
    problem = shared_problem(10.0)
    other = problem.rates_mbps * np.array([[0.5, 2.0]])
    rebuilt = build_problem(layer_profile(tiny_profile()),
                            [node_costs(layer_profile(tiny_profile()), "cli", 1.0)] * 6,
                            [node_costs(layer_profile(tiny_profile()), "vm-8vcpu", 1.0)] * 2,
                            other)
    changed = problem.with_rates(other)
    for stage in STAGE_NAMES:
        np.testing.assert_allclose(changed.stages[stage], rebuilt.stages[stage])
    with pytest.raises(ValueError, match="rates_mbps"):
        problem.with_rates(-other)


def test_min_max_path_shares_by_hand() -> None:
    # no compute: the share follows the volume and both paths are equal
    shares = rule_shares("min-max-path", np.array([3.0, 1.0]), np.zeros(2),
                         np.full(2, 100.0), 1.0)
    np.testing.assert_allclose(shares, [0.75, 0.25])
    # compute 2 and 0 ms, volume 1 each, link 1: 1/(P-2) + 1/P = 1 -> P = 2 + sqrt(2)
    shares = rule_shares("min-max-path", np.ones(2), np.array([2.0, 0.0]),
                         np.full(2, 100.0), 1.0)
    paths = np.array([2.0, 0.0]) + 1.0 / shares
    np.testing.assert_allclose(paths, 2 + math.sqrt(2), rtol=1e-9)
    assert shares.sum() == pytest.approx(1.0)
    for rule in ("equal", "volume"):
        assert rule_shares(rule, np.array([3.0, 1.0]), np.zeros(2), np.ones(2),
                           1.0).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="rule"):
        rule_shares("fair", np.ones(2), np.zeros(2), np.ones(2), 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_allocation_never_loses_to_equal_shares(seed: int) -> None:
    problem = shared_problem(1.5 * UNIT_RATE, seed=seed)
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(problem.pairs), size=6)
    helper_of = [0, 0, 0, 0, 1, 1]
    shares, winners = allocate_shares(problem, choice, helper_of)
    assert set(winners) == {0}
    assert shares[:4].sum() == pytest.approx(1.0) and np.isnan(shares[4:]).all()

    def finish(member_shares: np.ndarray) -> float:
        rates = effective_rates(problem, helper_of, np.nan_to_num(member_shares))
        table = StageTable(problem.with_rates(rates).instance(choice))
        return best_list_schedule(table, 0, [0, 1, 2, 3])[0]

    equal = np.array([0.25] * 4 + [np.nan] * 2)
    assert finish(shares) <= finish(equal) + 1e-9
    rates = effective_rates(problem, helper_of, np.nan_to_num(shares))
    assert (rates[:4, 0] <= problem.rates_mbps[:4, 0] + 1e-9).all()
    assert rates[:4, 0].sum() <= 1.5 * UNIT_RATE + 1e-9
    np.testing.assert_allclose(rates[4:, 1], problem.rates_mbps[4:, 1])


def test_shared_plan_is_judged_with_shared_transfer_times() -> None:
    problem = shared_problem(1.0 * UNIT_RATE)
    result = plan_shared_links(problem, time_limit=1.0)
    assert result.plan.makespan == pytest.approx(evaluate(result.instance, result.plan).makespan)
    assert result.plan.lower_bound is None
    choice = np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids])
    helper_of = [problem.helper_ids.index(result.plan.assignment[c]) for c in problem.client_ids]
    shares = np.array([np.nan if s is None else s for s in result.info["shares"].values()])
    on_link = [k for k, h in enumerate(helper_of) if h == 0]
    assert np.isnan(shares[[k for k in range(6) if k not in on_link]]).all()
    if on_link:
        assert shares[on_link].sum() == pytest.approx(1.0)
    expected = problem.with_rates(effective_rates(problem, helper_of, np.nan_to_num(shares)))
    np.testing.assert_allclose(result.instance.head_fwd_up,
                               expected.instance(choice).head_fwd_up)
    # a client on the shared link transfers no faster than its share allows
    volume = transfer_volume(problem, choice)
    for k in on_link:
        path = sum(getattr(result.instance, s)[k, 0] for s in STAGE_NAMES)
        unshared = sum(problem.stages[s][k, 0, choice[k]] for s in STAGE_NAMES)
        own = problem.rates_mbps[k, 0]
        assert path >= unshared - volume[k] / own + volume[k] / (shares[k] * UNIT_RATE) - 1e-6


def test_without_a_shared_link_nothing_changes() -> None:
    problem = shared_problem(math.inf)
    result = plan_shared_links(problem, time_limit=0.5)
    assert "shares" not in result.info
    np.testing.assert_allclose(result.instance.head_fwd_up,
                               problem.instance(np.array(
                                   [problem.pair_index(result.cuts[c])
                                    for c in problem.client_ids])).head_fwd_up)


def test_nodes_link_and_cli_share_column(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = nodes_doc()
    doc["helpers"][0]["link_mbps"] = UNIT_RATE
    problem = problem_from_nodes(doc, layer_profile(tiny_profile()))
    np.testing.assert_allclose(problem.link_mbps, [UNIT_RATE, math.inf])
    doc["helpers"][0]["link_mbps"] = 0
    with pytest.raises(NodesError) as info:
        problem_from_nodes(doc, layer_profile(tiny_profile()))
    assert info.value.field == "helpers[0].link_mbps"
    doc["helpers"][0]["link_mbps"] = UNIT_RATE
    profile_path, nodes_path = tmp_path / "model.json", tmp_path / "nodes.json"
    profile_path.write_text(json.dumps(tiny_profile()))
    nodes_path.write_text(json.dumps(doc))
    assert flsplit_main(["plan", "--profiles", str(profile_path), "--nodes", str(nodes_path),
                         "--time-limit", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "link share" in text and "%" in text


def test_link_unaware_reference_runs_with_equal_shares() -> None:
    problem = shared_problem(1.0 * UNIT_RATE)
    result = unaware_plan(problem, time_limit=0.5)
    assert result.plan.makespan == pytest.approx(evaluate(result.instance, result.plan).makespan)
    choice = np.array([problem.pair_index(result.cuts[c]) for c in problem.client_ids])
    helper_of = [problem.helper_ids.index(result.plan.assignment[c]) for c in problem.client_ids]
    on_link = [k for k, h in enumerate(helper_of) if h == 0]
    shares = np.full(6, np.nan)
    shares[on_link] = 1.0 / len(on_link)
    expected = problem.with_rates(effective_rates(problem, helper_of, np.nan_to_num(shares)))
    np.testing.assert_allclose(result.instance.tail_fwd_bwd,
                               expected.instance(choice).tail_fwd_bwd)
