"""Tests for fx cuts crossed by several tensors and for block-level candidates at any depth."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from flsplit.model.splitting import SplitModel, candidate_cuts, resolve_cuts, split_model

TOL = 1e-6


class Block(nn.Module):
    """A residual block that also takes a gate tensor and an int from the root."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.3)

    def forward(self, h: torch.Tensor, gate: torch.Tensor, width: int) -> torch.Tensor:
        return h + self.drop(torch.tanh(self.lin(h))) * gate / width


class Gated(nn.Module):
    """Blocks in a ModuleList receiving (hidden, gate, width): three values cross each cut."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 6)
        self.embed = nn.Linear(4, 6)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.size(-1)  # an int that does not depend on the batch: a constant
        gate = torch.sigmoid(self.gate(x))
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, gate, width)
        return self.out(h)


def _run_detached(split: SplitModel, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Forward part by part as a data plane does: every crossing tensor detached."""
    out: object = x
    links = []
    for i, part in enumerate(split.parts):
        if i == 0:
            y = part(out)
        else:
            sent = out if isinstance(out, tuple) else (out,)
            received = tuple(t.detach().requires_grad_(t.requires_grad) for t in sent)
            links.append((sent, received))
            y = part(*received)
        out = y
    return out, links


def _backward(loss: torch.Tensor, links: list) -> None:
    loss.backward()
    for sent, received in reversed(links):
        pairs = [(s, r.grad) for s, r in zip(sent, received, strict=True) if r.requires_grad]
        torch.autograd.backward([s for s, _ in pairs], [g for _, g in pairs])


def test_several_tensors_cross_between_blocks_and_constants_stay_in_the_part() -> None:
    torch.manual_seed(0)
    model = Gated().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    cands = candidate_cuts(model, x)
    assert cands == ["embed", "blocks.0", "blocks.1", "blocks.2", "out"]
    full = copy.deepcopy(model)
    split = split_model(model, ["blocks.1", "blocks.2"], x)
    sent = split.head(x)
    assert isinstance(sent, tuple) and len(sent) == 2  # gate, hidden (graph order); no int
    with torch.no_grad():
        torch.testing.assert_close(sent[0], torch.sigmoid(full.gate(x)), rtol=0, atol=0)
    torch.manual_seed(3)
    expected = full(x)
    F.mse_loss(expected, torch.ones_like(expected)).backward()
    torch.manual_seed(3)
    got, links = _run_detached(split, x)
    _backward(F.mse_loss(got, torch.ones_like(got)), links)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    grads = {k: p.grad for part in split.parts for k, p in part.named_parameters()}
    assert grads.keys() == dict(full.named_parameters()).keys()
    for key, param in full.named_parameters():
        torch.testing.assert_close(grads[key], param.grad, rtol=0, atol=TOL)


def test_a_cut_inside_a_block_stays_refused_though_several_values_cross_it() -> None:
    model = Gated()
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"inside 'blocks.1'.*between blocks"):
        resolve_cuts(model, ["blocks.1.drop"], x)


def test_non_tensor_crossings_that_are_not_constants_are_refused() -> None:
    class BatchDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.size(0)
            return self.b(self.a(x)) / n

    class ShapeCrosses(BatchDependent):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            return self.b(self.a(x.view(shape))).view(shape)

    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"int 'size' crossing it depends on the input"):
        split_model(BatchDependent(), ["b"], x)
    with pytest.raises(ValueError, match=r"a Size crosses it"):
        split_model(ShapeCrosses(), ["b"], x)


def test_vit_offers_cuts_between_encoder_layers_and_splits_exactly() -> None:
    torch.manual_seed(0)
    model = models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10, dropout=0.1,
    ).double()  # fmt: skip
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    cands = candidate_cuts(model, x)
    assert [f"encoder.layers.encoder_layer_{i}" for i in (1, 2, 3)] == cands[2:5]
    assert resolve_cuts(model, ["encoder.layers.encoder_layer_0"], x) == ("encoder.layers",)
    full = copy.deepcopy(model)
    layers = "encoder.layers.encoder_layer_"
    split = split_model(model, [f"{layers}1", f"{layers}3"], x)
    y = torch.tensor([1, 4, 9])
    torch.manual_seed(1)
    expected = full(x)
    F.cross_entropy(expected, y).backward()
    torch.manual_seed(1)
    got, links = _run_detached(split, x)
    _backward(F.cross_entropy(got, y), links)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    grads = {k: p.grad for part in split.parts for k, p in part.named_parameters()}
    for key, param in full.named_parameters():
        torch.testing.assert_close(grads[key], param.grad, rtol=0, atol=TOL)
    full.eval()
    split.eval()
    with torch.no_grad():
        torch.testing.assert_close(split.forward(x), full(x), rtol=0, atol=TOL)
