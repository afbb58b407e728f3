"""Inner cuts of helper chains: memory per piece and the balanced choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flsplit.model.chain_cuts import ChainSettings, balance, chain_cut_names, piece_memory_bytes


class _Wide(nn.Module):
    """Few parameters, a 1024-wide activation kept for the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(8, 1024), nn.Linear(1024, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _model() -> nn.Sequential:
    # body blocks "1".."4": a wide block with few parameters, a small one, a
    # parameter-heavy narrow one and one with a 512-wide input
    return nn.Sequential(
        nn.Linear(8, 8), _Wide(), nn.Linear(8, 64), nn.Linear(64, 512), nn.Linear(512, 8),
        nn.Linear(8, 4),
    )


def test_piece_memory_counts_three_parameter_copies_and_saved_activations() -> None:
    layer = nn.Linear(10, 20)
    x = torch.randn(4, 10)
    params = sum(p.numel() * 4 for p in layer.parameters())
    small, large = (piece_memory_bytes([layer], x, batch)[0] for batch in (4, 400))
    # a Linear saves its input for the weight gradient: 10 floats per sample
    assert small == pytest.approx(3 * params + 4 * 10 * 4)
    assert large - small == pytest.approx(396 * 10 * 4)


def test_auto_chain_cuts_balance_memory_at_the_training_batch() -> None:
    model, example, outer = _model(), torch.randn(2, 8), ("1", "5")
    blocks = list(model)[1:5]
    cut1 = model[0](example).detach()
    for batch, expected in ((1, ("1", "3", "5")), (512, ("1", "2", "5"))):
        sizes = piece_memory_bytes(blocks, cut1, batch)
        # brute force over the three places of the inner cut
        best = min(range(1, 4), key=lambda i: max(sum(sizes[:i]), sum(sizes[i:])))
        assert expected[1] == str(1 + best)
        got = chain_cut_names(model, example, outer, ChainSettings(length=2), batch_size=batch)
        assert got == expected
    # parameters alone would cut before the parameter-heavy block at any batch size


def test_balance_minimises_the_largest_group() -> None:
    assert balance([5, 1, 1, 1, 5], 2) in ([2], [3])
    assert balance([1, 1, 1, 1], 4) == [1, 2, 3]
    with pytest.raises(ValueError, match="cannot cut 2 segments into 3"):
        balance([1, 2], 3)
