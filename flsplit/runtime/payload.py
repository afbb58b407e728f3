"""The tensors of a frame's payload: allowed dtypes, layout checks, bytes and back.

A frame (:mod:`flsplit.runtime.wire`) announces each tensor it carries with a spec
``{"dtype": str, "shape": [int, ...], "nbytes": int}`` (in a multi-tensor frame also
``"grad": bool``); the payload is the tensors' raw bytes in C order, concatenated in
order. Nothing here trusts the header: every spec is checked (:func:`check_spec`) before
any byte is read, and the values are checked when they are read (:func:`materialize`):
floating-point ones finite on request, booleans 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MAX_DIMS = 8
MAX_DIM = 2**40
#: Most tensors one frame carries.
MAX_TENSORS = 16

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    # masks, ids and positions crossing a cut besides the hidden states
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values()}


class FrameError(ValueError):
    """A frame that does not follow the wire format."""


def short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (safe for ints too long to print)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text[:limit]


def tensor_bytes(tensor: torch.Tensor, name: str = "tensor") -> tuple[dict, bytes]:
    """The spec and raw bytes of ``tensor`` (detached, contiguous, on the CPU).

    Raises
    ------
    FrameError
        If its dtype cannot travel.
    """
    if not isinstance(tensor, torch.Tensor):
        raise FrameError(f"{name} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach()
    if tensor.dtype not in DTYPE_NAMES:
        raise FrameError(f"{name} dtype {tensor.dtype} cannot travel; allowed: {sorted(DTYPES)}")
    tensor = tensor.contiguous().cpu()
    payload = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    spec = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape), "nbytes": len(payload)}
    return spec, payload


def check_spec(spec: object, name: str = "tensor") -> tuple[torch.dtype, tuple[int, ...], int]:
    """Check a tensor spec of a header; ``name`` (``"tensor"``, ``"tensors[2]"``) names it
    in the error.

    Returns
    -------
    tuple
        dtype, shape and byte length.

    Raises
    ------
    FrameError
        Unknown dtype, a shape that is not a short list of bounded non-negative ints, or
        ``nbytes`` that does not match the shape.
    """
    if not isinstance(spec, dict):
        raise FrameError(f"header field {name!r} must be an object")
    dtype_name = spec.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise FrameError(f"{name} dtype {dtype_name!r:.40} is not one of {sorted(DTYPES)}")
    dtype = DTYPES[dtype_name]
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
        )
    ):
        raise FrameError(
            f"{name} shape {short(shape)} must be a list of at most {MAX_DIMS} ints "
            f"in [0, {MAX_DIM}]"
        )
    if math.prod(max(d, 1) for d in shape) > MAX_DIM:  # torch cannot stride it, even empty
        raise FrameError(f"{name} shape {shape} spans more than {MAX_DIM} elements")
    nbytes = spec.get("nbytes")
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes != expected:
        raise FrameError(
            f"{name} nbytes {short(nbytes, 40)} does not match shape {shape} ({expected})"
        )
    return dtype, tuple(shape), expected


def check_specs(
    specs: object, check: Callable[[object, str], tuple] | None = None
) -> tuple[list[tuple], tuple[bool, ...]]:
    """Check a multi-tensor header's ``tensors`` field.

    ``check(spec, name)`` checks one spec and returns a tuple that starts with its dtype
    (default :func:`check_spec`: dtype, shape and byte length).

    Returns
    -------
    tuple
        Per tensor what ``check`` returned, and the gradient flags.

    Raises
    ------
    FrameError
        Not a list of at most :data:`MAX_TENSORS` specs, a bad spec (named by its index),
        or a ``grad`` flag that is not a bool or is set on a dtype that is not floating.
    """
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise FrameError(
            f"header field 'tensors' must be a list of at most {MAX_TENSORS} tensor specs, "
            f"got {short(specs, 60)}"
        )
    layouts, flags = [], []
    for i, spec in enumerate(specs):
        name = f"tensors[{i}]"
        layout = (check or check_spec)(spec, name)
        dtype = layout[0]
        grad = spec.get("grad")
        if not isinstance(grad, bool):
            raise FrameError(f"{name} grad {short(grad, 40)} must be true or false")
        if grad and not dtype.is_floating_point:
            raise FrameError(f"{name} grad is set on dtype {DTYPE_NAMES[dtype]}, which has none")
        layouts.append(layout)
        flags.append(grad)
    return layouts, tuple(flags)


def materialize(
    dtype: torch.dtype,
    shape: tuple[int, ...],
    payload: memoryview,
    require_finite: bool = True,
    name: str = "tensor",
) -> torch.Tensor:
    """The tensor of ``payload`` (a copy that owns its memory), its values checked.

    Raises
    ------
    FrameError
        If ``require_finite`` and a floating-point tensor holds NaN or infinity, or a
        boolean one holds bytes other than 0 and 1.
    """
    try:
        if not len(payload):
            return torch.empty(shape, dtype=dtype)
        if dtype == torch.bool:  # any other byte would be a bool torch leaves undefined
            raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            if bool((raw > 1).any()):
                raise FrameError(f"{name} of dtype bool holds bytes other than 0 and 1")
            return raw.view(torch.bool).reshape(shape)
        tensor = torch.frombuffer(bytearray(payload), dtype=dtype).reshape(shape)
    except (RuntimeError, ValueError) as err:  # not expected after the layout checks
        if isinstance(err, FrameError):
            raise
        raise FrameError(f"{name} shape {shape} cannot be built: {err}") from None
    if require_finite and dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise FrameError(f"{name} holds NaN or infinite values")
    return tensor
