"""int8's scales are charged per transfer, whatever the batch: a client measured on one
link is predicted right on another."""

import pytest
import torch

from flsplit.config import parse_codec
from flsplit.model.costs import PartCosts, measure_part_costs
from flsplit.model.zoo import SmallCNN
from flsplit.runtime.codecs import encode
from flsplit.server.node_profiles import transfer_ms
from flsplit.server.round_planner import RoundPlanner

INT8, NONE = parse_codec("int8"), parse_codec("none")
#: examples/heterogeneous: SmallCNN cut at conv2 and fc2, batches of 32
SHAPE1, SHAPE2 = (32, 16, 8, 8), (32, 64)
COSTS = PartCosts(0.3, 0.5, 1.1, 1.2, 0.5, 4 * 32 * 1024, 4 * 32 * 64, 1.5,
                  cut1_shapes=(SHAPE1,), cut2_shapes=(SHAPE2,))
#: helper 8 has a fast link to the client, helper 9 a slow one
LINKS = {8: (40.0, 5.0), 9: (1.5, 5.0)}
FILL = 65 / 96  # 65 examples in batches of 32: 32, 32, 1


@pytest.mark.parametrize("shape", [SHAPE1, SHAPE2, (1, 64), (4, 7, 3), (5,)])
def test_int8_s_fixed_bytes_are_what_its_payload_holds_besides_the_values(shape):
    coded, _ = encode(torch.randn(shape), INT8)
    values = torch.Size(shape).numel()
    assert len(coded.payload) == values + INT8.fixed_bytes(shape)
    assert NONE.fixed_bytes(shape) == 0 == parse_codec("topk:0.1").fixed_bytes(shape)


def test_the_part_costs_know_the_shapes_crossing_the_cuts():
    costs = measure_part_costs(SmallCNN(1, 8), torch.zeros(2, 1, 8, 8), ("conv2", "fc2"), 32)
    assert costs.cut1_shapes == (SHAPE1,) and costs.cut2_shapes == (SHAPE2,)
    assert costs.cut1_bytes == 4 * 32 * 16 * 8 * 8 and costs.cut2_bytes == 4 * 32 * 64


def _sent(codec, raw, shape):
    """Bytes a mean batch really sends: the values of its examples and, per batch, int8's
    scales (one batch in three holds 1 example, the others 32)."""
    return codec.byte_ratio * raw * FILL + codec.fixed_bytes(shape)


def test_a_client_learned_on_a_fast_link_is_predicted_right_on_a_slow_one():
    planner = RoundPlanner(COSTS, lambda c, h: LINKS[h], method="greedy", time_limit=0.2,
                           activations=INT8, gradients=INT8)
    planner.add_client(1, compute_factor=30.0)
    planner.add_helper(8)
    planner.add_helper(9)
    planner.batch_fill[1] = FILL
    head_fwd, tail, head_bwd = 40.0, 25.0, 60.0  # the client's true compute (ms a batch)

    def truth(helper):
        rate, latency = LINKS[helper]
        up1 = transfer_ms(_sent(INT8, COSTS.cut1_bytes, SHAPE1), rate, latency)
        cut2 = 2 * transfer_ms(_sent(INT8, COSTS.cut2_bytes, SHAPE2), rate, latency)
        return head_fwd + up1, tail + cut2, head_bwd + up1

    planner.observe_client(1, 8, *truth(8))  # a round on the fast link
    instance = planner.instance([1], [8, 9])
    slow = truth(9)
    assert instance.head_fwd_up[0, 1] == pytest.approx(slow[0], rel=1e-6)
    assert instance.tail_fwd_bwd[0, 1] == pytest.approx(slow[1], rel=1e-6)
    assert instance.down_head_bwd[0, 1] == pytest.approx(slow[2], rel=1e-6)
    # the scales of the 64 channels at cut 2 are a quarter of what its mean batch sends
    assert INT8.fixed_bytes(SHAPE2) / _sent(INT8, COSTS.cut2_bytes, SHAPE2) > 0.25
