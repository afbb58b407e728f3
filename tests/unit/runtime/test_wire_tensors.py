"""Frames that carry several tensors: round trips with masks, ids and gradient flags, and
every refusal naming the field and the tensor's index."""

import json
import struct

import pytest
import torch

from flsplit.runtime import wire

HEADER = {"op": "fwd", "client": "1", "token": "t", "step": 0, "tensor": None}


def _frame(specs, payload: bytes, **fields) -> bytes:
    raw = json.dumps({**HEADER, "tensors": specs, **fields}).encode()
    return struct.pack("<4sI", wire.MAGIC, len(raw)) + raw + payload


def _spec(dtype="float32", shape=(2,), grad=False, nbytes=None):
    size = 1
    for d in shape:
        size *= d
    itemsize = torch.empty((), dtype=wire.DTYPES[dtype]).element_size()
    return {"dtype": dtype, "shape": list(shape),
            "nbytes": size * itemsize if nbytes is None else nbytes, "grad": grad}


def test_a_tuple_round_trips_with_masks_ids_and_gradient_flags():
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    ids = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    table = torch.randn(1, 3, 4, dtype=torch.bfloat16)  # float, no gradient
    small = [torch.tensor([1, -2], dtype=d) for d in (torch.int32, torch.int8)]
    byte = torch.tensor([0, 255], dtype=torch.uint8)
    sent = (hidden, mask, ids, table, *small, byte)
    frame = wire.decode(wire.encode(wire.Frame("fwd", "7", "tok", 3, sent)))
    assert isinstance(frame.tensor, tuple) and len(frame.tensor) == len(sent)
    for got, want in zip(frame.tensor, sent, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want.detach())
    # the flags say what needed a gradient on the sender's side; the values do not carry it
    assert frame.grads == (True, False, False, False, False, False, False)
    assert not any(t.requires_grad for t in frame.tensor)


def test_explicit_flags_win_and_a_single_tensor_keeps_its_frame():
    pair = (torch.ones(2), torch.zeros(2))
    frame = wire.decode(wire.encode(wire.Frame("bwd", "1", "t", 0, pair, grads=(False, True))))
    assert frame.grads == (False, True)
    single = wire.encode(wire.Frame("fwd", "1", "t", 0, torch.ones(2)))
    header = json.loads(single[8 : 8 + struct.unpack_from("<I", single, 4)[0]])
    assert "tensors" not in header and header["tensor"]["nbytes"] == 8
    decoded = wire.decode(single)
    assert isinstance(decoded.tensor, torch.Tensor) and decoded.grads is None


def test_an_empty_tuple_and_a_one_tuple_stay_tuples():
    assert wire.decode(wire.encode(wire.Frame("bwd", "1", "t", 0, ()))).tensor == ()
    (one,) = wire.decode(wire.encode(wire.Frame("bwd", "1", "t", 0, (torch.ones(3),)))).tensor
    assert torch.equal(one, torch.ones(3))


def test_the_header_is_checked_before_the_payload_is_read():
    data = _frame([_spec(), _spec("int64", (3,))], b"\0" * 32)
    raw = wire.decode_header(data)
    assert raw.frame.grads == (False, False) and raw.layouts is not None
    first, second = raw.tensor()
    assert first.shape == (2,) and second.dtype == torch.int64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_frame("x", b""), "header field 'tensors' must be a list of at most 16"),
        (_frame([_spec()] * 17, b"\0" * 8 * 17), "at most 16"),
        (_frame([_spec(), 3], b"\0" * 8), r"header field 'tensors\[1\]' must be an object"),
        (_frame([_spec(), {**_spec(), "dtype": "complex64"}], b"\0" * 16),
         r"tensors\[1\] dtype 'complex64' is not one of"),
        (_frame([_spec(), {**_spec(), "dtype": "int16"}], b"\0" * 12),
         r"tensors\[1\] dtype 'int16'"),
        (_frame([{**_spec(), "shape": [2, -1]}], b"\0" * 8), r"tensors\[0\] shape"),
        (_frame([{**_spec(), "shape": [1] * 9}], b"\0" * 4), r"tensors\[0\] shape"),
        (_frame([{**_spec(), "shape": "2"}], b"\0" * 8), r"tensors\[0\] shape"),
        (_frame([_spec(nbytes=7)], b"\0" * 8), r"tensors\[0\] nbytes 7 does not match"),
        (_frame([_spec(nbytes=True)], b"\0" * 8), r"tensors\[0\] nbytes"),
        (_frame([_spec(), _spec()], b"\0" * 12), "payload has 12 bytes, header announces 16"),
        (_frame([_spec()], b"\0" * 9), "payload has 9 bytes"),
        (_frame([{k: v for k, v in _spec().items() if k != "grad"}], b"\0" * 8),
         r"tensors\[0\] grad None must be true or false"),
        (_frame([_spec(grad=1)], b"\0" * 8), r"tensors\[0\] grad 1 must be true or false"),
        (_frame([_spec(), _spec("int64", grad=True)], b"\0" * 24),
         r"tensors\[1\] grad is set on dtype int64"),
        (_frame([_spec("bool", grad=True)], b"\0" * 2), r"tensors\[0\] grad is set on dtype bool"),
        (_frame([_spec()], b"\0" * 8, tensor={"dtype": "float32", "shape": [2], "nbytes": 8}),
         "'tensor' and 'tensors' are both set"),
    ],
)
def test_malformed_tensor_lists_are_refused_naming_the_field(data, message):
    with pytest.raises(wire.FrameError, match=message):
        wire.decode(data)


def test_values_are_checked_per_tensor():
    nan = torch.tensor([1.0, float("nan")]).numpy().tobytes()
    with pytest.raises(wire.FrameError, match=r"tensors\[1\] holds NaN"):
        wire.decode(_frame([_spec("int64"), _spec()], bytes(16) + nan))
    frame = wire.decode(_frame([_spec("int64"), _spec()], bytes(16) + nan), require_finite=False)
    assert torch.isnan(frame.tensor[1][1])
    with pytest.raises(wire.FrameError, match=r"tensors\[0\] of dtype bool holds bytes other"):
        wire.decode(_frame([_spec("bool", (3,))], b"\x00\x01\x02"))
    # integer tensors hold no NaN: any value travels
    ids = wire.decode(_frame([_spec("int64", (1,))], struct.pack("<q", -(2**63)))).tensor[0]
    assert int(ids[0]) == -(2**63)


def test_what_cannot_be_sent_is_refused_at_encoding():
    with pytest.raises(wire.FrameError, match=r"tensors\[1\] dtype torch.complex64"):
        wire.encode(wire.Frame("fwd", "1", "t", 0, (torch.ones(1), torch.ones(1).to(torch.cfloat))))
    with pytest.raises(wire.FrameError, match="17 tensors"):
        wire.encode(wire.Frame("fwd", "1", "t", 0, (torch.ones(1),) * 17))
    with pytest.raises(wire.FrameError, match="tensors only"):
        wire.encode(wire.Frame("fwd", "1", "t", 0, (torch.ones(1), None)))
    with pytest.raises(wire.FrameError, match="2 gradient flags for 1 tensors"):
        wire.encode(wire.Frame("fwd", "1", "t", 0, (torch.ones(1),), grads=(True, False)))
    with pytest.raises(wire.FrameError, match=r"tensors\[0\] grad is set on dtype int64"):
        wire.encode(wire.Frame("fwd", "1", "t", 0, (torch.ones(1, dtype=torch.int64),),
                               grads=(True,)))
