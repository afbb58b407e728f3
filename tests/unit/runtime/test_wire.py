"""The data-plane wire format: round trips and refusal of malformed frames."""

import contextlib
import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flsplit.runtime import wire


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_keeps_values_shape_and_dtype(dtype):
    tensor = torch.randn(3, 4, 5).to(dtype)
    frame = wire.decode(wire.encode(wire.Frame("fwd", "7", "tok", 3, tensor)))
    assert (frame.op, frame.client, frame.token, frame.step) == ("fwd", "7", "tok", 3)
    assert frame.tensor.dtype == dtype
    assert torch.equal(frame.tensor, tensor)


def test_frame_without_tensor():
    frame = wire.decode(wire.encode(wire.Frame("finish", "c", "t", 9)))
    assert frame.tensor is None and frame.step == 9


def _frame_with_header(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<4sI", wire.MAGIC, len(raw)) + raw + payload


GOOD_HEADER = {"op": "fwd", "client": "1", "token": "t", "step": 0}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"XXXX" + b"\0" * 10, "magic"),
        (b"FLS", "shorter"),
        (struct.pack("<4sI", wire.MAGIC, 999) + b"{}", "header length"),
        (_frame_with_header({**GOOD_HEADER, "op": "rm"}), "op"),
        (_frame_with_header({**GOOD_HEADER, "step": "1"}), "step"),
        (_frame_with_header({**GOOD_HEADER, "client": 5}), "client"),
        (
            _frame_with_header(
                {**GOOD_HEADER, "tensor": {"dtype": "object", "shape": [1], "nbytes": 8}},
                b"\0" * 8,
            ),
            "dtype",
        ),
        (
            _frame_with_header(
                {**GOOD_HEADER, "tensor": {"dtype": "float32", "shape": [2, -1], "nbytes": 8}},
                b"\0" * 8,
            ),
            "shape",
        ),
        (
            _frame_with_header(
                {**GOOD_HEADER, "tensor": {"dtype": "float32", "shape": [3], "nbytes": 8}},
                b"\0" * 8,
            ),
            "nbytes",
        ),
        (
            _frame_with_header(
                {**GOOD_HEADER, "tensor": {"dtype": "float32", "shape": [2], "nbytes": 8}},
                b"\0" * 4,
            ),
            "payload",
        ),
        (_frame_with_header(GOOD_HEADER, b"junk"), "payload"),
    ],
)
def test_malformed_frames_are_refused_naming_the_field(data, field):
    with pytest.raises(wire.FrameError, match=field):
        wire.decode(data)


def test_non_finite_values_are_refused():
    data = wire.encode(wire.Frame("fwd", "1", "t", 0, torch.tensor([1.0, float("nan")])))
    with pytest.raises(wire.FrameError, match="NaN"):
        wire.decode(data)


def test_frame_size_limit():
    data = wire.encode(wire.Frame("fwd", "1", "t", 0, torch.zeros(1000)))
    with pytest.raises(wire.FrameError, match="exceeds"):
        wire.decode(data, max_frame_bytes=1000)


def test_unsupported_tensor_dtype_cannot_be_sent():
    with pytest.raises(wire.FrameError, match="dtype"):
        wire.encode(wire.Frame("fwd", "1", "t", 0, torch.zeros(2, dtype=torch.int16)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(data):
    with contextlib.suppress(wire.FrameError):
        wire.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_mutated_frames_parse_or_fail_cleanly(position, value):
    data = bytearray(wire.encode(wire.Frame("bwd", "3", "tok", 1, torch.ones(2, 3))))
    data[position % len(data)] = value
    try:
        frame = wire.decode(bytes(data))
    except wire.FrameError:
        return
    assert frame.op in wire.OPS


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ({**GOOD_HEADER, "step": -1}, "step"),
        ({**GOOD_HEADER, "client": "c" * 300}, "client"),
        ({**GOOD_HEADER, "token": "t" * 600}, "token"),
        ({**GOOD_HEADER, "service_ms": float("nan")}, "service_ms"),
        ({**GOOD_HEADER, "service_ms": 10**400}, "service_ms"),
        (
            {
                **GOOD_HEADER,
                "tensor": {"dtype": "float32", "shape": [2**40, 2**40, 0], "nbytes": 0},
            },
            "spans more than",
        ),
        (
            {**GOOD_HEADER, "tensor": {"dtype": "float32", "shape": [2**41], "nbytes": 2**43}},
            "tensor shape",
        ),
        (
            {**GOOD_HEADER, "tensor": {"dtype": ["float32"], "shape": [1], "nbytes": 4}},
            "dtype",
        ),
    ],
)
def test_header_fields_out_of_range_are_refused(header, field):
    with pytest.raises(wire.FrameError, match=field):
        wire.decode(_frame_with_header(header, b"\0" * 4))


def test_ints_beyond_pythons_digit_limit_are_a_frame_error():
    raw = b'{"op":"fwd","client":"1","token":"t","step":' + b"9" * 5000 + b"}"
    with pytest.raises(wire.FrameError, match="header"):
        wire.decode(struct.pack("<4sI", wire.MAGIC, len(raw)) + raw)


def test_decode_header_checks_the_layout_but_reads_no_values():
    data = wire.encode(wire.Frame("fwd", "1", "t", 0, torch.tensor([1.0, float("nan")])))
    raw = wire.decode_header(data)
    assert (raw.frame.client, raw.dtype, raw.shape) == ("1", torch.float32, (2,))
    with pytest.raises(wire.FrameError, match="NaN"):
        raw.tensor()
    assert torch.isnan(raw.tensor(require_finite=False)[1])


def test_optimizer_events_round_trip_and_bad_ones_name_the_field():
    events = [["zero"], ["step", "Adam", {"lr": 0.01, "betas": [0.9, 0.99], "foreach": None}]]
    frame = wire.decode(wire.encode(wire.Frame("bwd", "1", "t", 3, torch.ones(2), optim=events)))
    assert frame.optim == events
    assert wire.decode(wire.encode(wire.Frame("fwd", "1", "t", 3, torch.ones(2)))).optim is None
    for bad, match in [
        ("zero", "'optim' must be a list"),
        ([["zero"]] * (wire.MAX_OPTIM_EVENTS + 1), "'optim' must be a list"),
        ([["jump"]], "is not"),
        ([["step", "os.system", {}]], "names no optimizer class"),
        ([["step", "SGD", {"lr": float("inf")}]], "lr=inf"),
        ([["step", "SGD", {"lr": "0.1"}]], "not a finite number"),
        ([["step", "SGD", {"bad key": 1}]], "name 'bad key'"),
        ([["step", "SGD", {f"k{i}": 1 for i in range(40)}]], "at most"),
    ]:
        header = {**GOOD_HEADER, "optim": bad}
        with pytest.raises(wire.FrameError, match=match):
            wire.decode(_frame_with_header(header, b"\0" * 4))
