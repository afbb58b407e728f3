"""Plans and predictions charge the links the bytes the data plane's codecs send."""

import numpy as np
import pytest
import torch

from flsplit.config import parse_codec
from flsplit.model.costs import CutCosts, PartCosts
from flsplit.runtime.codecs import coded_nbytes, encode
from flsplit.server.node_profiles import NodeProfiles, transfer_ms
from flsplit.server.round_planner import RoundPlanner
from flsplit.server.sync_planning import step_costs

INT8, FP16, NONE = parse_codec("int8"), parse_codec("fp16"), parse_codec("none")
#: cut 1 crosses a (32, 16, 10, 10) float32 tensor, cut 2 a (32, 16, 5, 5) one
SHAPE1, SHAPE2 = (32, 16, 10, 10), (32, 16, 5, 5)
COSTS = PartCosts(5.0, 6.0, 20.0, 30.0, 4.0, 4 * 51_200, 4 * 12_800, 12.0)
RATE, LATENCY = 2.0, 5.0


def _planner(activations=None, gradients=None, **kwargs):
    planner = RoundPlanner(
        COSTS, lambda c, h: (RATE, LATENCY), method="greedy", time_limit=0.2,
        activations=activations, gradients=gradients, **kwargs,
    )
    planner.add_client(1)
    planner.add_helper(9)
    return planner


def _links(instance):
    """Link time of each stage with a link (the planner's compute taken out)."""
    return (
        instance.head_fwd_up[0, 0] - COSTS.head_fwd_ms,
        instance.tail_fwd_bwd[0, 0] - COSTS.tail_ms,
        instance.down_head_bwd[0, 0] - COSTS.head_bwd_ms,
    )


def test_the_byte_ratio_is_the_coded_size_of_a_large_tensor():
    raw = 4 * int(np.prod(SHAPE1))
    for codec in ("none", "fp16", "bf16", "int8", "topk:0.1", "randtopk:0.05+ef", "utopk:0.1"):
        setting = parse_codec(codec)
        assert setting.byte_ratio == pytest.approx(coded_nbytes(SHAPE1, setting) / raw, rel=0.01)
    # what utopk really sends: as many entries as topk, whatever the draws
    x = torch.randn(SHAPE1)
    coded, _ = encode(x, parse_codec("utopk:0.1"), torch.Generator().manual_seed(0))
    assert len(coded.payload) == coded_nbytes(SHAPE1, parse_codec("topk:0.1"))


def test_with_int8_the_instances_link_times_are_those_of_the_coded_bytes():
    raw, coded = _links(_planner().instance([1], [9])), _links(
        _planner(INT8, INT8).instance([1], [9])
    )
    bits = [r - n * LATENCY for r, n in zip(raw, (1, 2, 1), strict=True)]
    coded_bits = [c - n * LATENCY for c, n in zip(coded, (1, 2, 1), strict=True)]
    for r, c in zip(bits, coded_bits, strict=True):
        assert r / c == pytest.approx(4.0)  # exact coded sizes: within 1%
    assert coded[0] == pytest.approx(transfer_ms(coded_nbytes(SHAPE1, INT8), RATE, LATENCY),
                                     rel=0.02)


def test_each_direction_is_charged_its_own_codec():
    planner = _planner(FP16, INT8)  # activations as fp16, gradients as int8
    up1, tail, down1 = _links(planner.instance([1], [9]))
    assert up1 == pytest.approx(transfer_ms(COSTS.cut1_bytes / 2, RATE, LATENCY))
    assert down1 == pytest.approx(transfer_ms(COSTS.cut1_bytes / 4, RATE, LATENCY))
    assert tail == pytest.approx(transfer_ms(COSTS.cut2_bytes / 2, RATE, LATENCY)
                                 + transfer_ms(COSTS.cut2_bytes / 4, RATE, LATENCY))


@pytest.mark.parametrize("codecs", [(NONE, NONE), (INT8, INT8), (FP16, INT8)])
def test_a_measured_round_teaches_the_same_compute_with_any_codec(codecs):
    act, grad = codecs
    planner = _planner(act, grad)
    planner.batch_fill[1] = 0.75
    head_fwd, tail, head_bwd = 9.0, 12.0, 11.0  # the client's true compute
    n1, n2 = 0.75 * COSTS.cut1_bytes, 0.75 * COSTS.cut2_bytes
    # what the client measures: its compute plus the coded bytes on its link
    stage1 = head_fwd + transfer_ms(n1 * act.byte_ratio, RATE, LATENCY)
    stage3 = (tail + transfer_ms(n2 * act.byte_ratio, RATE, LATENCY)
              + transfer_ms(n2 * grad.byte_ratio, RATE, LATENCY))
    stage5 = head_bwd + transfer_ms(n1 * grad.byte_ratio, RATE, LATENCY)
    planner.observe_client(1, 9, stage1, stage3, stage5)
    learned = planner.clients[1]
    assert learned.head_fwd_ms == pytest.approx(head_fwd)
    assert learned.tail_ms == pytest.approx(tail)
    assert learned.head_bwd_ms == pytest.approx(head_bwd)
    total = COSTS.head_fwd_ms + COSTS.tail_ms + COSTS.head_bwd_ms
    assert learned.factor == pytest.approx((head_fwd + tail + head_bwd) / total)


PROFILE = {
    "model": "toy",
    "layers": [
        {"name": "l0", "activation_kib": 64.0, "weights_kib": 1.0, "memory_kib": 100.0},
        {"name": "a", "activation_kib": 32.0, "weights_kib": 1.0, "memory_kib": 200.0},
        {"name": "b", "activation_kib": 16.0, "weights_kib": 1.0, "memory_kib": 300.0},
    ],
    "devices": {"server": {"forward_ms": [10.0] * 3, "backward_ms": [8.0] * 3,
                           "update_ms": [2.0] * 3}},
}


def test_the_cut_problem_charges_each_direction_its_codec():
    cuts = CutCosts.from_profile(PROFILE, ["a,b"], "a,b")

    def stages(act, grad):
        planner = RoundPlanner(cuts.part_costs("a,b"), lambda c, h: (RATE, LATENCY),
                               cut_costs=cuts, activations=act, gradients=grad)
        planner.add_client(1)
        planner.add_helper(9)
        planner.batch_fill[1] = 0.5
        return {k: float(v[0, 0, 0]) for k, v in planner.cut_problem([1], [9]).stages.items()}

    raw, coded = stages(NONE, NONE), stages(FP16, INT8)
    tx1 = transfer_ms(0.5 * 64.0 * 1024, RATE, 0.0)  # cut 1 is after segment l0
    tx2 = transfer_ms(0.5 * 32.0 * 1024, RATE, 0.0)
    assert raw["head_fwd_up"] - coded["head_fwd_up"] == pytest.approx(tx1 / 2)
    assert raw["down_head_bwd"] - coded["down_head_bwd"] == pytest.approx(3 * tx1 / 4)
    assert raw["tail_fwd_bwd"] - coded["tail_fwd_bwd"] == pytest.approx(tx2 / 2 + 3 * tx2 / 4)
    assert raw["body_fwd"] == coded["body_fwd"]


def test_synchronous_steps_charge_the_coded_bytes_and_hold_the_decoded_ones():
    def costs(act, grad):
        profiles = NodeProfiles(COSTS, lambda c, h: (RATE, 0.0), activations=act,
                                gradients=grad)
        profiles.add_client(1)
        profiles.add_helper(9)
        return step_costs(profiles, [1], [9], np.array([[4]]), 32)

    raw, coded = costs(NONE, NONE), costs(INT8, FP16)
    assert coded.transfer_ms[0, 0] == pytest.approx(raw.transfer_ms[0, 0] * (0.25 + 0.5) / 2)
    assert coded.memory_mib[0] == pytest.approx(raw.memory_mib[0])
