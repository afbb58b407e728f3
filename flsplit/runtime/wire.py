"""Wire format of the data plane: tensors as raw bytes with a checked header, never pickled.

A frame is::

    MAGIC (4 bytes, b"FLS1") | header length (uint32, little endian) | header | payload

The header is a UTF-8 JSON object with the fields

- ``op``: what the frame asks for or answers (``"fwd"``, ``"bwd"``, ``"finish"``,
  ``"result"``; ``"sync"`` in synchronous-step mode, :mod:`flsplit.runtime.sync_helper`;
  ``"abort"``: the client gives up its round, ``"watch"``: the client's connection is
  watched for the round, :mod:`flsplit.runtime.dataplane`),
- ``client``: the sending client's id (a string),
- ``token``: the round token the server gave that client,
- ``step``: the batch counter of the sending client (in synchronous-step mode the global
  step index the frame belongs to),
- ``tensor``: ``null`` or ``{"dtype": str, "shape": [int, ...], "nbytes": int}``: the one
  tensor the frame carries,
- ``tensors`` (optional, instead of a non-null ``tensor``): a list of at most
  :data:`MAX_TENSORS` specs ``{"dtype", "shape", "nbytes", "grad": bool}``: the frame
  carries several tensors (a cut that several values cross, :mod:`flsplit.model.crossing`).
  ``grad`` says whether the receiver makes that tensor require a gradient (a hidden state:
  ``true``; an attention mask, position ids, a rotary table: ``false``); it may be set on
  floating-point dtypes only. A backward frame carries the gradients of the flagged
  tensors of the forward it answers, in order (all flags ``false``).
- ``service_ms`` (replies only, optional): time the helper held the request (queue and
  compute; decoding the request and coding the reply are not in it: like the client's
  own coding, the client counts them as network time), so the client can tell network
  time from helper time;
- ``micro`` and ``micros`` (optional, default ``0`` and ``1``): the frame carries
  micro-batch ``micro`` of ``micros`` micro-batches of batch ``step``
  (``0 <= micro < micros <= MAX_MICROS``). A helper accumulates the gradients of a
  batch's micro-batches and steps once, after the last of them. Frames without these
  fields are a batch of one micro-batch, as before they existed; :func:`encode` leaves
  them out then, so receivers that predate them read such frames unchanged.
- ``optim`` (optional, ``fwd``, ``bwd`` and ``finish`` frames of a client whose own
  training loop drives the body's optimizer, :mod:`flsplit.runtime.remote_body`): the
  optimizer events since the client's last frame, applied to its body in order before
  the frame's task: ``["zero"]`` (clear the body's gradients) or
  ``["step", CLASS, HYPERPARAMETERS]`` (step the body with ``torch.optim.CLASS`` and those
  hyperparameters). A ``bwd`` frame with the field (even an empty list) only adds its
  gradients to the body's; the body steps on ``step`` events alone.
- ``codec`` (optional, ``fwd`` and ``bwd`` requests): the codec of the request's
  direction, spelled as in the run config (``"int8"``, ``"topk:0.1+ef"``,
  :mod:`flsplit.runtime.codecs`). The receiver codes its reply with it (an activation
  answers an activation, a gradient a gradient), and a relaying helper codes its frames to
  the next hop with it. Coded tensors name their codec in their spec (``codec`` and its
  fields; ``nbytes`` is then the coded length); a frame without ``codec`` and without
  coded specs is byte for byte what it was before codecs existed.
- ``reason`` (optional, ``abort`` frames): why the client gives up, e.g.
  ``"ValueError: bad batch"``: at most :data:`MAX_REASON_CHARS` printable characters (no
  line breaks or control characters, so it is safe to log).

The payload is the tensor's raw bytes in C order, exactly ``nbytes`` long (several
tensors: their bytes concatenated in order). Every field is checked before any byte of the
payload is interpreted: allowed dtypes only (:data:`DTYPES`: the floats, and ``int64``,
``int32``, ``int8``, ``uint8``, ``bool`` for masks and ids), a bounded number of
dimensions and of tensors, ``nbytes == prod(shape) * itemsize`` for every tensor, the sum
of them ``== len(payload)``, a maximum frame size, and (on request) finite values of
floating-point tensors; booleans must be bytes 0 or 1. Anything else raises
:class:`FrameError` with a message that names the offending field (and the tensor's index,
``tensors[2] dtype ...``). :func:`decode_header` does all of that but reading the values,
so a receiver can check who sent a frame before touching its payload.

In Python. :attr:`Frame.tensor` is ``None``, a tensor (a ``tensor`` frame, byte for byte
what it was before several tensors could travel) or a tuple of tensors (a ``tensors``
frame, whatever its length); :attr:`Frame.grads` holds a tuple's gradient flags. When a
tuple is encoded without flags, a tensor is flagged when it is floating point and requires
a gradient (:func:`flsplit.model.crossing.needs_grad`), so a sender may pass the tensors
its part returned as they are.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

from flsplit.config import CodecSetting
from flsplit.model.crossing import needs_grad
from flsplit.runtime import codecs
from flsplit.runtime.codecs import Coded, Coding
from flsplit.runtime.payload import (
    DTYPES,
    ITEMSIZE,
    MAX_DIM,
    MAX_DIMS,
    MAX_TENSORS,
    FrameError,
    check_specs,
    materialize,
    tensor_bytes,
)
from flsplit.runtime.payload import short as _short

__all__ = [
    "DTYPES",
    "MAX_DIM",
    "MAX_DIMS",
    "MAX_TENSORS",
    "Frame",
    "FrameError",
    "RawFrame",
    "check_optim_events",
    "check_reason",
    "decode",
    "decode_header",
    "encode",
    "short_reason",
]

MAGIC = b"FLS1"
HEADER_LIMIT = 64 * 1024
DEFAULT_MAX_FRAME_BYTES = 512 * 1024 * 1024
MAX_ID_CHARS = 256
MAX_TOKEN_CHARS = 512
MAX_MICROS = 4096
MAX_OPTIM_EVENTS = 64
MAX_HYPERPARAMETERS = 32
MAX_NAME_CHARS = 64
MAX_REASON_CHARS = 300
OPS = ("fwd", "bwd", "finish", "result", "sync", "abort", "watch")

_ITEMSIZE = ITEMSIZE
_PREFIX = struct.Struct("<4sI")
Tensors = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class Frame:
    """A decoded frame.

    Parameters
    ----------
    op : str
        One of :data:`OPS`.
    client : str
        Id of the client the frame belongs to.
    token : str
        Round token presented by the client (empty in replies).
    step : int
        Batch counter of the client.
    tensor : torch.Tensor, tuple of torch.Tensor, or None
        The carried tensor, or tensors (a ``tensors`` frame), if any.
    service_ms : float
        Replies: time the helper held the request, in ms.
    micro, micros : int
        Micro-batch index and micro-batches in the batch (``0`` and ``1``: a whole batch).
    optim : list, optional
        The client's optimizer events (its own training loop).
    reason : str
        ``abort`` frames: why the client gives up its round.
    grads : tuple of bool, optional
        A tuple's gradient flags (decoded frames always have them; encoding without them
        flags the floating-point tensors that require a gradient).
    codec : CodecSetting, optional
        The codec of the frame's direction (header field ``codec``); the sender codes the
        tensors itself (:class:`~flsplit.runtime.codecs.Feedback`), so ``tensor`` may hold
        :class:`~flsplit.runtime.codecs.Coded` tensors.
    """

    op: str
    client: str
    token: str = ""
    step: int = 0
    tensor: Tensors | None = None
    service_ms: float = 0.0
    micro: int = 0
    micros: int = 1
    optim: list[list] | None = None
    reason: str = ""
    grads: tuple[bool, ...] | None = None
    codec: CodecSetting | None = None


def encode(frame: Frame) -> bytes:
    """Serialize ``frame`` into bytes."""
    if frame.op not in OPS:
        raise FrameError(f"op {frame.op!r} is not one of {OPS}")
    tensor_header, specs, payload = None, None, b""
    if isinstance(frame.tensor, tuple | list):
        specs, payload = _encode_tensors(tuple(frame.tensor), frame.grads)
    elif isinstance(frame.tensor, Coded):
        tensor_header, payload = frame.tensor.spec, frame.tensor.payload
    elif frame.tensor is not None:
        tensor_header, payload = tensor_bytes(frame.tensor)
    fields = {
        "op": frame.op,
        "client": frame.client,
        "token": frame.token,
        "step": frame.step,
        "tensor": tensor_header,
    }
    if specs is not None:
        fields["tensors"] = specs
    if frame.service_ms:
        fields["service_ms"] = frame.service_ms
    if frame.micros != 1 or frame.micro != 0:
        _check_micro(frame.micro, frame.micros)
        fields["micro"], fields["micros"] = frame.micro, frame.micros
    if frame.optim is not None:
        fields["optim"] = check_optim_events(frame.optim)
    if frame.reason:
        fields["reason"] = check_reason(frame.reason)
    if frame.codec is not None and not frame.codec.lossless:
        fields["codec"] = str(frame.codec)
    header = json.dumps(fields, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, len(header)) + header + payload


def _encode_tensors(
    tensors: tuple[torch.Tensor, ...], grads: tuple[bool, ...] | None
) -> tuple[list[dict], bytes]:
    if len(tensors) > MAX_TENSORS:
        raise FrameError(f"{len(tensors)} tensors in one frame; at most {MAX_TENSORS} travel")
    if any(not isinstance(t, torch.Tensor | Coded) for t in tensors):
        kinds = ", ".join(type(t).__name__ for t in tensors)
        raise FrameError(f"a frame carries tensors only, got ({kinds})")
    if grads is None and any(isinstance(t, Coded) for t in tensors):
        raise FrameError("coded tensors travel with their gradient flags")
    flags = needs_grad(tensors) if grads is None else tuple(bool(g) for g in grads)
    if len(flags) != len(tensors):
        raise FrameError(f"{len(flags)} gradient flags for {len(tensors)} tensors")
    specs, chunks = [], []
    for i, (tensor, grad) in enumerate(zip(tensors, flags, strict=True)):
        if isinstance(tensor, Coded):
            spec, data = tensor.spec, tensor.payload
        else:
            spec, data = tensor_bytes(tensor, f"tensors[{i}]")
        if grad and not tensor.is_floating_point():
            raise FrameError(f"tensors[{i}] grad is set on dtype {spec['dtype']}, which has none")
        specs.append({**spec, "grad": grad})
        chunks.append(data)
    return specs, b"".join(chunks)


@dataclass
class RawFrame:
    """A frame whose header and tensor layout are validated but whose payload is not read.

    Lets a receiver check who sent a frame (and drop it) before copying or scanning the
    payload. :meth:`tensor` finishes decoding.
    """

    frame: Frame
    dtype: torch.dtype | None = None
    shape: tuple[int, ...] = ()
    payload: memoryview | None = None
    #: a ``tensors`` frame: dtype, shape, byte length and coding (``None``: raw) of each
    layouts: list[tuple[torch.dtype, tuple[int, ...], int, Coding | None]] | None = None
    #: a ``tensor`` frame's coding (``None``: raw bytes)
    coding: Coding | None = None

    def tensor(self, require_finite: bool = True) -> Tensors | None:
        """Materialize the tensor, or the tuple of tensors (copies that own their
        memory), or ``None``.

        Raises
        ------
        FrameError
            If ``require_finite`` and a floating-point tensor holds NaN or infinity, or a
            boolean one bytes other than 0 and 1.
        """
        if self.payload is None:
            return None
        if self.layouts is not None:
            tensors, offset = [], 0
            for i, (dtype, shape, size, coding) in enumerate(self.layouts):
                part = self.payload[offset : offset + size]
                tensors.append(_materialize(dtype, shape, part, require_finite, coding,
                                            f"tensors[{i}]"))
                offset += size
            return tuple(tensors)
        if self.dtype is None:
            return None
        return _materialize(self.dtype, self.shape, self.payload, require_finite, self.coding)


def _materialize(
    dtype: torch.dtype,
    shape: tuple[int, ...],
    payload: memoryview,
    require_finite: bool,
    coding: Coding | None,
    name: str = "tensor",
) -> torch.Tensor:
    """A raw tensor (:func:`~flsplit.runtime.payload.materialize`) or a coded one
    (decoded, then its values checked as a raw one's)."""
    if coding is None:
        return materialize(dtype, shape, payload, require_finite, name)
    tensor = codecs.decode(coding, dtype, shape, payload, name)
    if require_finite and not bool(torch.isfinite(tensor).all()):
        raise FrameError(f"{name} holds NaN or infinite values")
    return tensor


def decode(
    data: bytes,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    require_finite: bool = True,
) -> Frame:
    """Parse and validate a frame.

    Parameters
    ----------
    data : bytes
        The received bytes.
    max_frame_bytes : int
        Largest frame accepted.
    require_finite : bool
        Refuse tensors holding NaN or infinity.

    Returns
    -------
    Frame
        The validated frame; its tensor owns its memory.

    Raises
    ------
    FrameError
        If anything in ``data`` is malformed; the message names the field.
    """
    raw = decode_header(data, max_frame_bytes=max_frame_bytes)
    raw.frame.tensor = raw.tensor(require_finite)
    return raw.frame


def decode_header(data: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> RawFrame:
    """Validate everything of a frame but the tensor values.

    Parameters
    ----------
    data : bytes
        The received bytes.
    max_frame_bytes : int
        Largest frame accepted.

    Returns
    -------
    RawFrame
        Header fields, tensor dtype and shape, and the payload (its length checked).

    Raises
    ------
    FrameError
        If anything in ``data`` is malformed; the message names the field.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError(f"frame must be bytes, got {type(data).__name__}")
    if len(data) > max_frame_bytes:
        raise FrameError(f"frame size {len(data)} exceeds the limit of {max_frame_bytes} bytes")
    if len(data) < _PREFIX.size:
        raise FrameError(
            f"frame of {len(data)} bytes is shorter than its {_PREFIX.size}-byte prefix"
        )
    magic, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise FrameError(f"magic {magic!r} is not {MAGIC!r}")
    if header_len > HEADER_LIMIT or _PREFIX.size + header_len > len(data):
        raise FrameError(f"header length {header_len} does not fit the frame of {len(data)} bytes")
    raw_header = bytes(data[_PREFIX.size : _PREFIX.size + header_len])
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # also ints beyond Python's digit limit
        raise FrameError(f"header is not UTF-8 JSON: {err!s:.120}") from None
    if not isinstance(header, dict):
        raise FrameError("header must be a JSON object")
    op = _field(header, "op", str)
    if op not in OPS:
        raise FrameError(f"op {op!r:.40} is not one of {OPS}")
    client = _field(header, "client", str)
    if len(client) > MAX_ID_CHARS:
        raise FrameError(f"header field 'client' is longer than {MAX_ID_CHARS} characters")
    token = _field(header, "token", str)
    if len(token) > MAX_TOKEN_CHARS:
        raise FrameError(f"header field 'token' is longer than {MAX_TOKEN_CHARS} characters")
    step = _field(header, "step", int)
    if not 0 <= step < 2**63:
        raise FrameError(f"header field 'step' must be in [0, 2**63): {_short(step, 40)}")
    service_ms = header.get("service_ms", 0.0)
    if (
        not isinstance(service_ms, int | float)
        or isinstance(service_ms, bool)
        or not 0 <= service_ms < 1e12  # also refuses NaN and ints beyond float range
    ):
        raise FrameError(
            f"header field 'service_ms' must be a non-negative number: {_short(service_ms, 40)}"
        )
    micro, micros = header.get("micro", 0), header.get("micros", 1)
    for name, value in (("micro", micro), ("micros", micros)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise FrameError(f"header field {name!r} must be int, got {_short(value, 40)}")
    _check_micro(micro, micros)
    optim = header.get("optim")
    reason = header.get("reason", "")
    codec = header.get("codec")
    frame = Frame(
        op=op,
        client=client,
        token=token,
        step=step,
        service_ms=float(service_ms),
        micro=micro,
        micros=micros,
        optim=None if optim is None else check_optim_events(optim),
        reason=check_reason(reason),
        codec=None if codec is None else codecs.frame_codec(codec),
    )
    payload = memoryview(data)[_PREFIX.size + header_len :]
    spec = header.get("tensor")
    if "tensors" in header:
        if spec is not None:
            raise FrameError("header fields 'tensor' and 'tensors' are both set")
        def check(one: object, name: str) -> tuple:
            return codecs.check_coded_spec(one, name, max_frame_bytes)

        layouts, frame.grads = check_specs(header["tensors"], check)
        decoded = sum(math.prod(shape) * _ITEMSIZE[dtype] for dtype, shape, _, c in layouts if c)
        if decoded > max_frame_bytes:
            raise FrameError(f"tensors decode to {decoded} bytes, more than the frame limit")
        total = sum(size for _, _, size, _ in layouts)
        if len(payload) != total:
            raise FrameError(f"payload has {len(payload)} bytes, header announces {total}")
        return RawFrame(frame, payload=payload, layouts=layouts)
    if spec is None:
        if len(payload):
            raise FrameError(f"frame without tensor carries {len(payload)} payload bytes")
        return RawFrame(frame)
    dtype, shape, coding = _tensor_layout(spec, payload, max_frame_bytes)
    return RawFrame(frame, dtype, shape, payload, coding=coding)


def _check_micro(micro: int, micros: int) -> None:
    if not 1 <= micros <= MAX_MICROS:
        raise FrameError(
            f"header field 'micros' must be in [1, {MAX_MICROS}]: {_short(micros, 40)}"
        )
    if not 0 <= micro < micros:
        raise FrameError(
            f"header field 'micro' must be in [0, micros={micros}): {_short(micro, 40)}"
        )


def _field(header: dict, name: str, kind: type) -> object:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FrameError(f"header field {name!r} must be {kind.__name__}, got {_short(value)}")
    return value


def _tensor_layout(
    spec: object, payload: memoryview, max_frame_bytes: int
) -> tuple[torch.dtype, tuple[int, ...], Coding | None]:
    if not isinstance(spec, dict):
        raise FrameError("header field 'tensor' must be an object or null")
    dtype, shape, expected, coding = codecs.check_coded_spec(spec, "tensor", max_frame_bytes)
    if len(payload) != expected:
        raise FrameError(f"payload has {len(payload)} bytes, header announces {expected}")
    return dtype, shape, coding


def check_reason(reason: object) -> str:
    """Validate a frame's ``reason`` field and return it.

    Raises
    ------
    FrameError
        If it is not a string of at most :data:`MAX_REASON_CHARS` printable characters.
    """
    if not isinstance(reason, str):
        raise FrameError(f"header field 'reason' must be str, got {_short(reason, 40)}")
    if len(reason) > MAX_REASON_CHARS:
        raise FrameError(f"header field 'reason' is longer than {MAX_REASON_CHARS} characters")
    if not reason.isprintable():
        raise FrameError("header field 'reason' holds line breaks or control characters")
    return reason


def short_reason(error: BaseException) -> str:
    """``"Type: message"`` of ``error`` as a valid ``reason`` field: its first line, control
    characters replaced, cut to :data:`MAX_REASON_CHARS` characters."""
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    reason = f"{type(error).__name__}: {message}" if message else type(error).__name__
    reason = "".join(c if c.isprintable() else "?" for c in reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 3] + "..."
    return reason


def check_optim_events(events: object) -> list[list]:
    """Validate a frame's ``optim`` field and return it with lists as they were.

    Raises
    ------
    FrameError
        If it is not a list of at most :data:`MAX_OPTIM_EVENTS` events, each ``["zero"]``
        or ``["step", name, hyperparameters]`` with a short identifier as ``name`` and at
        most :data:`MAX_HYPERPARAMETERS` hyperparameters, each a finite number, a bool,
        ``null`` or a list of at most 4 finite numbers.
    """
    if not isinstance(events, list) or len(events) > MAX_OPTIM_EVENTS:
        raise FrameError(
            f"header field 'optim' must be a list of at most {MAX_OPTIM_EVENTS} events, "
            f"got {_short(events, 60)}"
        )
    for event in events:
        if event == ["zero"]:
            continue
        if not (isinstance(event, list) and len(event) == 3 and event[0] == "step"):
            raise FrameError(
                f"optim event {_short(event, 60)} is not [\"zero\"] or [\"step\", name, {{...}}]"
            )
        name, hyper = event[1], event[2]
        if not isinstance(name, str) or not name.isidentifier() or len(name) > MAX_NAME_CHARS:
            raise FrameError(f"optim step names no optimizer class: {_short(name, 60)}")
        if not isinstance(hyper, dict) or len(hyper) > MAX_HYPERPARAMETERS:
            raise FrameError(
                f"optim step hyperparameters must be an object of at most "
                f"{MAX_HYPERPARAMETERS} entries, got {_short(hyper, 60)}"
            )
        for key, value in hyper.items():
            if not key.isidentifier() or len(key) > MAX_NAME_CHARS:
                raise FrameError(f"optim hyperparameter name {_short(key, 60)} is not valid")
            if not _hyper_value_ok(value):
                raise FrameError(
                    f"optim hyperparameter {key}={_short(value, 60)} is not a finite number, "
                    "bool, null or short list of numbers"
                )
    return events


def _hyper_value_ok(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value) and abs(value) < 1e300
    if isinstance(value, list):
        return len(value) <= 4 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    return False
