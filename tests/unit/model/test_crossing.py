"""What crosses a cut (tensors or tuples of them) and what the loss reads of an output."""

from dataclasses import dataclass

import pytest
import torch

from flsplit.model import crossing
from flsplit.model.outputs import correct_count, logits_of


def test_a_tensor_stays_a_tensor_and_a_tuple_a_tuple():
    x = torch.ones(2)
    assert crossing.as_tuple(x) == (x,)
    assert crossing.unpack([x]) is x
    assert crossing.unpack((x, x)) == (x, x)
    assert crossing.call_part(lambda a, b: a + b, (x, x)).tolist() == [2.0, 2.0]
    assert crossing.call_part(lambda a: a * 3, x).tolist() == [3.0, 3.0]


def test_gradient_flags_and_detached_inputs():
    hidden = torch.randn(2, 3, requires_grad=True) * 2  # not a leaf
    mask = torch.ones(2, 3, dtype=torch.bool)
    table = torch.randn(1, 3)
    assert crossing.needs_grad((hidden, mask, table)) == (True, False, False)
    leaves = crossing.detach_inputs((hidden, mask, table), (True, False, False))
    assert [t.requires_grad for t in leaves] == [True, False, False]
    assert all(t.is_leaf for t in leaves)
    # a bare tensor without flags needs a gradient when it is floating point, as before
    assert crossing.detach_inputs(table).requires_grad
    with pytest.raises(ValueError, match=r"tensor 1 of dtype torch\.bool cannot need"):
        crossing.detach_inputs((hidden, mask), (True, True))
    with pytest.raises(ValueError, match="1 gradient flags for 2 tensors"):
        crossing.detach_inputs((hidden, mask), (True,))


def test_backward_reaches_only_the_outputs_that_need_a_gradient():
    w = torch.ones(3, requires_grad=True)
    outputs = (w * 2, torch.zeros(3, dtype=torch.int64), (w * 3).detach())
    crossing.backward(outputs, (torch.full((3,), 0.5, dtype=torch.float64),))
    assert w.grad.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="2 gradients for 1 outputs"):
        crossing.backward((w * 2,), (torch.ones(3), torch.ones(3)))


def test_chunks_split_the_batch_and_carry_broadcast_tensors_whole():
    hidden = torch.arange(10.0).reshape(5, 2)
    table = torch.randn(1, 2)
    chunks = crossing.chunk((hidden, table), 2)
    assert [c[0].shape[0] for c in chunks] == [3, 2]
    assert all(c[1] is table for c in chunks)
    assert torch.equal(crossing.cat([c[0] for c in chunks]), hidden)
    # a bare tensor gives the views tensor.split(ceil(n / m)) gives
    views = crossing.chunk(hidden, 4)
    assert [tuple(v.shape) for v in views] == [(2, 2), (2, 2), (1, 2)]
    named = crossing.chunk({"ids": torch.arange(4), "mask": torch.ones(4, 3)}, 2)
    assert named[1]["ids"].tolist() == [2, 3] and named[1]["mask"].shape == (2, 3)
    assert crossing.cat(named)["ids"].tolist() == [0, 1, 2, 3]


def test_sizes_devices_and_batches_of_every_kind():
    named = {
        "ids": torch.zeros(4, 3, dtype=torch.int64),
        "mask": torch.ones(4, 3, dtype=torch.bool),
    }
    assert crossing.batch_size(named) == 4
    assert crossing.batch_size((torch.tensor(1.0), torch.zeros(6, 2))) == 6
    assert crossing.nbytes(named) == 4 * 3 * 8 + 4 * 3
    assert crossing.nbytes((torch.zeros(2), torch.zeros(3, dtype=torch.float64))) == 8 + 24
    moved = crossing.to_device(named, "cpu")
    assert set(moved) == {"ids", "mask"}
    with pytest.raises(ValueError, match="no tensor with a batch dimension"):
        crossing.batch_size(torch.tensor(1.0))


@dataclass
class _ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


def test_logits_of_every_output_kind():
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of(_ModelOutput(logits)) is logits
    assert logits_of((logits, torch.zeros(1))) is logits
    with pytest.raises(TypeError, match="cannot find logits"):
        logits_of({"x": 1})


def test_correct_count_for_classes_and_tokens():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert correct_count(logits, torch.tensor([1, 1, 1])) == 2.0
    assert correct_count(logits, torch.tensor([1, -100, 0])) == 1.0
    # tokens [B, T, V] vs [B, T]: each example counts its fraction of right labelled tokens
    tokens = torch.zeros(2, 3, 4)
    tokens[0, :, 1] = 1.0  # example 0 predicts 1 everywhere
    tokens[1, :, 2] = 1.0  # example 1 predicts 2 everywhere
    labels = torch.tensor([[1, 1, -100], [2, 0, 0]])
    assert correct_count(tokens, labels) == pytest.approx(1.0 + 1 / 3)
    # segmentation [B, C, H, W] vs [B, H, W]: argmax over dimension 1
    seg = torch.zeros(1, 3, 2, 2)
    seg[0, 2] = 1.0
    assert correct_count(seg, torch.tensor([[[2, 2], [2, 0]]])) == pytest.approx(0.75)
    assert correct_count(torch.zeros(3, 4), torch.zeros(5, dtype=torch.int64)) == 0.0
