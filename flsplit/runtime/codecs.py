"""Compression of the tensors a frame carries: codecs, their wire layout and checks, and
the sender's error feedback.

A codec (:class:`~flsplit.config.CodecSetting`, spelled ``none``, ``fp16``, ``bf16``,
``int8``, ``topk:F``, ``randtopk:F`` or ``utopk:F``, each lossy one optionally with
``+ef``) turns a
``float32`` or ``float64`` tensor into fewer bytes. Other tensors (masks, ids, tensors
already in half precision, empty ones) always travel raw. A coded tensor's spec in a
frame header is its *decoded* dtype and shape plus the codec's fields, and ``nbytes`` is
the coded payload's length:

========  ===========================  ===============================================
codec     spec fields                  payload
========  ===========================  ===============================================
fp16      ``codec``                    the values as float16 (clamped to +-65504)
bf16      ``codec``                    the values as bfloat16
int8      ``codec``, ``channels`` C    C float32 scales, C float32 zero points, then
                                       one uint8 per value: ``x = zero + scale * q``
topk      ``codec``, ``k``, ``index``  k indices (``index``: int32, or int64 beyond
                                       2**31 entries) into the flattened tensor, then
                                       k float32 values; every other entry is 0
========  ===========================  ===============================================

``int8`` quantizes per channel: dimension 1 of a 4-D tensor (``N, C, H, W``), the last
dimension of a 2-D, 3-D or 5-D-and-up tensor, one channel for a 0-D or 1-D tensor.
``randtopk`` travels as ``topk``: it only picks the k entries at random, each with a
chance that grows with its magnitude (the Gumbel top-k trick), instead of the k largest.
``utopk`` (unbiased top-k) travels as ``topk`` too: it keeps each entry with a chance
``p = min(1, |x| / t)``, the threshold ``t`` set so that the chances sum to k, and sends a
kept entry as ``x / p``. The entries above ``t`` go exactly; each of the others goes as
``+-t`` or not at all, so the decoded tensor's expectation is the tensor itself (the
sparsification of Wangni et al., 2018, "Gradient Sparsification for
Communication-Efficient Distributed Optimization", with variance as low as an unbiased
k-sparse code allows). Systematic sampling draws exactly k entries with those chances.

Decoding trusts nothing (:func:`check_coded_spec`, :func:`decode`): a known codec on a
``float32``/``float64`` spec; ``channels`` equal to the channel count the shape implies;
``k`` in ``[0, numel]``; ``nbytes`` equal to the layout's length; the decoded size within
the frame limit; scales finite and positive, zero points and values finite, every index in
``[0, numel)`` (repeats are allowed; one of their values is kept). The decoded tensor goes
through the checks of a raw one (finite values, the body's input spec).

Error feedback (:class:`Feedback`) keeps, per link, cut, direction and micro-batch, what
the codec lost last time and adds it to the next tensor before coding; a tensor of
another shape or dtype (a last, smaller batch) starts afresh.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from flsplit.config import (
    SPARSE_CODECS,
    CodecSetting,
    int8_channel_axis,
    int8_channels,
    parse_codec,
)
from flsplit.runtime.payload import DTYPE_NAMES, DTYPES, FrameError, check_spec
from flsplit.runtime.payload import short as _short

__all__ = [
    "NONE",
    "Coded",
    "Coding",
    "Feedback",
    "check_coded_spec",
    "codable",
    "coded_nbytes",
    "decode",
    "encode",
    "wire_nbytes",
]

NONE = CodecSetting()
#: codec names that appear in a frame (``randtopk`` and ``utopk`` travel as ``topk``)
WIRE_CODECS = ("fp16", "bf16", "int8", "topk")
#: dtypes a codec applies to; every other tensor travels raw
CODABLE = (torch.float32, torch.float64)
FP16_MAX = 65504.0
_INDEX = {"int32": torch.int32, "int64": torch.int64}


@dataclass(frozen=True)
class Coding:
    """The checked codec fields of a coded spec."""

    codec: str
    channels: int = 0
    k: int = 0
    index: str = "int32"


@dataclass(frozen=True)
class Coded:
    """A tensor coded for the wire: its spec (without ``grad``) and payload bytes."""

    spec: dict
    payload: bytes

    def is_floating_point(self) -> bool:
        """Coded tensors are always floating point (what :mod:`wire` asks of a flagged
        tensor)."""
        return True


def codable(tensor: torch.Tensor) -> bool:
    """Whether a codec applies to ``tensor`` (non-empty ``float32`` or ``float64``)."""
    return tensor.dtype in CODABLE and tensor.numel() > 0


def _k(codec: CodecSetting, numel: int) -> int:
    return min(numel, max(1, round(codec.fraction * numel)))


def _index_dtype(numel: int) -> str:
    return "int32" if numel <= 2**31 - 1 else "int64"


def coded_nbytes(shape: tuple[int, ...], codec: CodecSetting) -> int:
    """Payload bytes of a ``float32`` tensor of ``shape`` under ``codec``."""
    numel = math.prod(shape)
    if codec.name == "none" or numel == 0:
        return numel * 4
    if codec.name in ("fp16", "bf16"):
        return numel * 2
    if codec.name == "int8":
        return codec.fixed_bytes(shape) + numel
    k = _k(codec, numel)
    return k * (4 + (4 if _index_dtype(numel) == "int32" else 8))


def wire_nbytes(tensors: torch.Tensor | tuple, codec: CodecSetting) -> int:
    """Payload bytes ``tensors`` take on the wire under ``codec`` (raw bytes of what no
    codec applies to): what an emulated link charges for them."""
    if isinstance(tensors, torch.Tensor):
        tensors = (tensors,)
    total = 0
    for tensor in tensors:
        if codec.lossless or not codable(tensor):
            total += tensor.numel() * tensor.element_size()
        else:
            total += coded_nbytes(tuple(tensor.shape), codec)
    return total


# -- encoding ------------------------------------------------------------------------


def encode(
    tensor: torch.Tensor,
    codec: CodecSetting,
    generator: torch.Generator | None = None,
    sent: bool = True,
) -> tuple[Coded, torch.Tensor | None]:
    """Code ``tensor`` (:func:`codable`) with a lossy ``codec``.

    Returns
    -------
    tuple
        The coded tensor and, if ``sent``, what the receiver will decode (for error
        feedback; of ``tensor``'s dtype and shape), else ``None``.
    """
    x = tensor.detach().contiguous().cpu()
    dtype_name, shape = DTYPE_NAMES[x.dtype], list(x.shape)
    if codec.name in ("fp16", "bf16"):
        if codec.name == "fp16":
            half = x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
        else:
            half = x.to(torch.bfloat16)
        payload = half.reshape(-1).view(torch.uint8).numpy().tobytes()
        spec = {"dtype": dtype_name, "shape": shape, "nbytes": len(payload), "codec": codec.name}
        return Coded(spec, payload), half.to(x.dtype) if sent else None
    if codec.name == "int8":
        return _encode_int8(x, dtype_name, shape, sent)
    if codec.name in SPARSE_CODECS:
        return _encode_topk(x, dtype_name, shape, codec, generator, sent)
    raise ValueError(f"codec {codec.name!r} does not code tensors")


def _channel_view(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape per-channel scales broadcast with."""
    axis = int8_channel_axis(len(shape))
    return tuple(shape[d] if d == axis else 1 for d in range(len(shape)))


def _per_channel(x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dimensions a per-channel reduction runs over, and the broadcast view shape."""
    axis = int8_channel_axis(x.dim())
    return tuple(d for d in range(x.dim()) if d != axis), _channel_view(tuple(x.shape))


def _encode_int8(
    x: torch.Tensor, dtype_name: str, shape: list[int], sent: bool
) -> tuple[Coded, torch.Tensor | None]:
    dims, view = _per_channel(x)
    work = x.float()
    if dims:
        low, high = work.amin(dim=dims), work.amax(dim=dims)
    else:  # a 0-D tensor
        low, high = work.reshape(1), work.reshape(1)
    low, high = low.reshape(-1), high.reshape(-1)
    scale = (high - low) / 255.0
    # a constant channel: any positive scale decodes it exactly (every q is 0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = scale.clamp(min=torch.finfo(torch.float32).tiny)
    b_low, b_scale = low.reshape(view), scale.reshape(view)
    q = (work - b_low).div_(b_scale).round_().clamp_(0, 255).to(torch.uint8)
    channels = int(scale.numel())
    payload = b"".join(
        (
            scale.numpy().tobytes(),
            low.numpy().tobytes(),
            q.reshape(-1).numpy().tobytes(),
        )
    )
    spec = {
        "dtype": dtype_name, "shape": shape, "nbytes": len(payload), "codec": "int8",
        "channels": channels,
    }
    decoded = (b_low + b_scale * q.float()).to(x.dtype) if sent else None
    return Coded(spec, payload), decoded


def _encode_topk(
    x: torch.Tensor,
    dtype_name: str,
    shape: list[int],
    codec: CodecSetting,
    generator: torch.Generator | None,
    sent: bool,
) -> tuple[Coded, torch.Tensor | None]:
    flat = x.reshape(-1)
    numel = flat.numel()
    k = _k(codec, numel)
    score = flat.abs().float()
    index = None
    if codec.name == "utopk":
        index, values = _unbiased_pick(flat, k, generator)
    if codec.name == "randtopk":  # Gumbel top-k: k draws without replacement ~ |x|
        uniform = torch.rand(numel, generator=generator).clamp_(min=1e-12)
        score = score.clamp(min=1e-30).log_() - (-uniform.log_()).log_()
    if index is None:  # topk, randtopk, and utopk of a tensor with at most k non-zeros
        index = torch.topk(score, k, sorted=False).indices
        values = flat[index].float()
    index_name = _index_dtype(numel)
    payload = index.to(_INDEX[index_name]).numpy().tobytes() + values.numpy().tobytes()
    spec = {
        "dtype": dtype_name, "shape": shape, "nbytes": len(payload), "codec": "topk",
        "k": k, "index": index_name,
    }
    if not sent:
        return Coded(spec, payload), None
    decoded = torch.zeros_like(flat)
    decoded[index] = values.to(x.dtype)
    return Coded(spec, payload), decoded.reshape(x.shape)


def _unbiased_pick(
    flat: torch.Tensor, k: int, generator: torch.Generator | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``utopk``'s k indices and float32 values, or ``(None, None)`` when ``flat`` has at
    most k non-zero entries (top-k then sends them all exactly)."""
    magnitude = flat.abs().double()  # float64: the chances are summed over the tensor
    if int(torch.count_nonzero(magnitude)) <= k:
        return None, None
    ordered = torch.topk(magnitude, k, sorted=True).values  # the k largest, descending
    # with the j largest kept for sure, t = (sum of the rest) / (k - j); the smallest j
    # whose (j+1)-th largest is at most that t makes every chance min(1, |x| / t) sum to k
    before = torch.cat((torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)[:-1]))
    rest = (magnitude.sum() - before).clamp_(min=0.0)
    threshold = rest / torch.arange(k, 0, -1, dtype=torch.float64)
    sure = int(torch.nonzero(ordered[:k] <= threshold)[0])  # j = k - 1 always qualifies
    chance = (magnitude / threshold[sure]).clamp_(max=1.0)
    # systematic sampling: k points a unit apart, one random offset, on the chances laid
    # end to end; an entry is drawn when a point falls in its stretch (length <= 1)
    edges = chance.cumsum(0)
    # (the stretches sum to k up to rounding: spread the points over their exact sum,
    # so that the last one stays inside)
    step = float(edges[-1]) / k
    offset = torch.rand(1, generator=generator, dtype=torch.float64)
    points = (offset + torch.arange(k, dtype=torch.float64)) * step
    index = torch.searchsorted(edges, points, right=True).clamp_(max=flat.numel() - 1)
    values = (flat[index].double() / chance[index]).float()
    return index, values


# -- decoding ------------------------------------------------------------------------


def check_coded_spec(
    spec: object, name: str = "tensor", max_decoded_bytes: int | None = None
) -> tuple[torch.dtype, tuple[int, ...], int, Coding | None]:
    """Check a tensor spec that may be coded; a spec without ``codec`` is a raw one
    (:func:`~flsplit.runtime.payload.check_spec`).

    Returns
    -------
    tuple
        Decoded dtype and shape, payload bytes, and the coding (``None``: raw).

    Raises
    ------
    FrameError
        Naming the field: an unknown codec, a dtype no codec applies to, a channel or
        index count or index dtype that does not fit the shape, ``nbytes`` that does not
        match the layout, or a decoded tensor larger than ``max_decoded_bytes``.
    """
    if not isinstance(spec, dict) or "codec" not in spec:
        return (*check_spec(spec, name), None)
    codec = spec.get("codec")
    if not isinstance(codec, str) or codec not in WIRE_CODECS:
        raise FrameError(f"{name} codec {_short(codec, 40)} is not one of {list(WIRE_CODECS)}")
    dtype_name = spec.get("dtype")
    if dtype_name not in ("float32", "float64"):
        raise FrameError(
            f"{name} codec {codec} on dtype {_short(dtype_name, 40)}: codecs code float32 "
            "and float64 tensors only"
        )
    dtype = DTYPES[dtype_name]
    # the shape's checks of a raw spec, with the nbytes it would have raw
    raw_spec = {"dtype": dtype_name, "shape": spec.get("shape")}
    raw_spec["nbytes"] = _raw_nbytes(raw_spec["shape"], dtype)
    _, shape, raw_bytes = check_spec(raw_spec, name)
    if max_decoded_bytes is not None and raw_bytes > max_decoded_bytes:
        raise FrameError(
            f"{name} decodes to {raw_bytes} bytes, more than the frame limit {max_decoded_bytes}"
        )
    numel = math.prod(shape)
    coding = Coding(codec)
    if codec in ("fp16", "bf16"):
        expected = 2 * numel
    elif codec == "int8":
        channels = spec.get("channels")
        wanted = int8_channels(shape)
        if not _is_int(channels) or channels != wanted:
            raise FrameError(
                f"{name} int8 channels {_short(channels, 40)} does not match shape {list(shape)} "
                f"({wanted} scales and zero points)"
            )
        coding = Coding(codec, channels=channels)
        expected = 8 * channels + numel
    else:
        k, index = spec.get("k"), spec.get("index")
        if not _is_int(k) or not 0 <= k <= numel:
            raise FrameError(f"{name} topk k {_short(k, 40)} is not in [0, {numel}]")
        if index not in _INDEX:
            raise FrameError(f"{name} topk index {_short(index, 40)} is not int32 or int64")
        coding = Coding(codec, k=k, index=index)
        expected = k * (4 + (4 if index == "int32" else 8))
    nbytes = spec.get("nbytes")
    if not _is_int(nbytes) or nbytes != expected:
        raise FrameError(
            f"{name} nbytes {_short(nbytes, 40)} does not match codec {codec} on shape "
            f"{list(shape)} ({expected})"
        )
    return dtype, shape, expected, coding


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _raw_nbytes(shape: object, dtype: torch.dtype) -> object:
    """The raw byte length of a shape that looks like one (else a value check_spec
    refuses with the shape's own message)."""
    if isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape):
        return math.prod(shape) * (8 if dtype == torch.float64 else 4)
    return 0


def decode(
    coding: Coding,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    payload: memoryview,
    name: str = "tensor",
) -> torch.Tensor:
    """The tensor a checked coded spec's payload holds (a copy that owns its memory).

    Raises
    ------
    FrameError
        A scale that is not finite and positive, a zero point or value that is not
        finite, or an index outside ``[0, numel)``.
    """
    numel = math.prod(shape)
    data = bytearray(payload)
    if coding.codec in ("fp16", "bf16"):
        half = torch.float16 if coding.codec == "fp16" else torch.bfloat16
        values = torch.frombuffer(data, dtype=half) if numel else torch.empty(0, dtype=half)
        return values.to(dtype).reshape(shape)
    if coding.codec == "int8":
        c = coding.channels
        params = torch.frombuffer(data, dtype=torch.float32, count=2 * c) if c else None
        scale = params[:c] if c else torch.empty(0)
        zero = params[c:] if c else torch.empty(0)
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise FrameError(f"{name} int8 scales must be finite and positive")
        if not bool(torch.isfinite(zero).all()):
            raise FrameError(f"{name} int8 zero points must be finite")
        if not numel:
            return torch.empty(shape, dtype=dtype)
        q = torch.frombuffer(data, dtype=torch.uint8, offset=8 * c).reshape(shape)
        view = _channel_view(shape)
        scale, zero = scale.reshape(view), zero.reshape(view)
        return (zero + scale * q.float()).to(dtype)
    k = coding.k
    width = 4 if coding.index == "int32" else 8
    out = torch.zeros(numel, dtype=dtype)
    if not k:
        return out.reshape(shape)
    index = torch.frombuffer(data, dtype=_INDEX[coding.index], count=k).to(torch.int64)
    values = torch.frombuffer(data, dtype=torch.float32, count=k, offset=k * width)
    if bool((index < 0).any()) or bool((index >= numel).any()):
        raise FrameError(f"{name} topk index outside [0, {numel})")
    if not bool(torch.isfinite(values).all()):
        raise FrameError(f"{name} topk values hold NaN or infinite values")
    out[index] = values.to(dtype)
    return out.reshape(shape)


# -- error feedback ------------------------------------------------------------------


class Feedback:
    """A sender's coder: codes tensors and, for codecs with ``+ef``, keeps what each
    link, cut, direction and micro-batch (the ``key``) lost last time.

    Thread safe: micro-batches in flight together code under different keys.
    """

    def __init__(self, seed: int = 0) -> None:
        self._residuals: dict[Hashable, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._generator = torch.Generator().manual_seed(seed)

    def code(
        self, tensor: torch.Tensor, codec: CodecSetting, key: Hashable
    ) -> torch.Tensor | Coded:
        """``tensor`` coded with ``codec`` (itself when no codec applies)."""
        if codec.lossless or not codable(tensor):
            return tensor
        x = tensor.detach().cpu()
        if codec.feedback:
            with self._lock:
                residual = self._residuals.pop(key, None)
            if residual is not None and residual.shape == x.shape and residual.dtype == x.dtype:
                x = x + residual  # what was lost last time goes now
        if codec.name in ("randtopk", "utopk"):  # one generator, drawn from by every thread
            with self._lock:
                coded, sent = encode(x, codec, self._generator, sent=codec.feedback)
        else:
            coded, sent = encode(x, codec, sent=codec.feedback)
        if codec.feedback:
            with self._lock:
                self._residuals[key] = x - sent
        return coded

    def code_all(
        self, tensors: torch.Tensor | tuple, codec: CodecSetting, key: Hashable,
        grads: tuple[bool, ...] | None = None,
    ) -> torch.Tensor | Coded | tuple:
        """A tensor, or the tensors of a tuple flagged in ``grads`` (the hidden states;
        masks, ids and tables travel raw), coded with ``codec``."""
        if isinstance(tensors, torch.Tensor):
            return self.code(tensors, codec, key)
        flags = grads if grads is not None else (True,) * len(tensors)
        return tuple(
            self.code(t, codec, (*key, i) if isinstance(key, tuple) else (key, i)) if flag else t
            for i, (t, flag) in enumerate(zip(tensors, flags, strict=True))
        )

    def forget(self, prefix: Hashable) -> None:
        """Drop the residuals of keys starting with ``prefix`` (a client that left)."""
        with self._lock:
            for key in [k for k in self._residuals if isinstance(k, tuple) and k[0] == prefix]:
                del self._residuals[key]


def frame_codec(value: object) -> CodecSetting:
    """A frame's ``codec`` field read as a :class:`~flsplit.config.CodecSetting`.

    Raises
    ------
    FrameError
        If it is not a codec spelling.
    """
    if not isinstance(value, str) or len(value) > 40:
        raise FrameError(f"header field 'codec' must be a codec spelling, got {_short(value, 40)}")
    try:
        return parse_codec(value, "codec")
    except ValueError as err:
        raise FrameError(f"header field {str(err).removeprefix('run config ')}") from None
