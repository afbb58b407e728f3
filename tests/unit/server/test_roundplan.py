"""Round planning details: partial batches."""

import pytest

from flsplit.model.costs import PartCosts
from flsplit.server.node_profiles import transfer_ms
from flsplit.server.round_planner import RoundPlanner


def test_a_partial_mean_batch_scales_the_transfers():
    costs = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 400_000, 100_000, 12.0)
    planner = RoundPlanner(costs, lambda c, h: (2.0, 5.0), method="greedy", time_limit=0.2)
    planner.add_client(1)
    planner.add_helper(9)
    full = planner.instance([1], [9])
    planner.batch_fill[1] = 0.5
    half = planner.instance([1], [9])
    up_full = transfer_ms(400_000, 2.0, 5.0)
    up_half = transfer_ms(200_000, 2.0, 5.0)
    assert full.head_fwd_up[0, 0] == pytest.approx(5.0 + up_full)
    assert half.head_fwd_up[0, 0] == pytest.approx(5.0 + up_half)
    assert half.body_fwd[0, 0] == full.body_fwd[0, 0]
    # what the client measured is read with the same fill: compute is not mistaken for link
    planner.observe_client(1, 9, 7.0 + up_half, 30.0, 8.0 + up_half)
    assert planner.clients[1].head_fwd_ms == pytest.approx(7.0)
    assert planner.clients[1].head_bwd_ms == pytest.approx(8.0)
