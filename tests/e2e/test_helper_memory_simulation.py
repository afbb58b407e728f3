"""End to end in Flower's simulation engine with the helper's shared memory mode."""

import torch

from tests.e2e.small_run import assert_loss_falls, run_small


def test_shared_helper_memory_trains_every_layer():
    initial, result, strategy = run_small({"helper-memory": "shared"})
    before = initial.to_torch_state_dict()
    after = result.arrays.to_torch_state_dict()
    for keys in (strategy.head_keys, strategy.body_keys, strategy.tail_keys):
        for key in (k for k in keys if k.endswith("weight")):
            assert not torch.allclose(before[key], after[key]), key
    assert_loss_falls(result)
