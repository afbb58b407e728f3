"""Block splitting: cut a model between its repeated blocks by running its own forward.

:mod:`flsplit.model.splitting` uses this module for every ``transformers`` model and for
any model that ``torch.fx.symbolic_trace`` cannot trace. Hugging Face models do not trace
(``transformers.utils.fx`` is gone in transformers 5; fx fails in the attention-mask code
with "co_varnames is too small"), and ``torch.export`` freezes the ``training`` flag of
dropout into the graph, so exported parts would differ from ``model.eval()``. Instead, the
parts run the model's own Python code, so every module keeps its train/eval behaviour.

Blocks
------
The blocks are the longest ``nn.ModuleList`` (or ``nn.Sequential``) of two or more modules
of one class that the forward calls once each, in order: GPT-2's ``transformer.h``, BERT's
``bert.encoder.layer``, LLaMA's ``model.layers``. A cut is named after the block that starts
the next part (``"transformer.h.1"``; indices into :func:`candidate_cuts` work too). The
default U-shape keeps the first and the last block on the client (cuts before blocks 1 and
``n - 1``).

The example input (a tensor, or a mapping of tensors passed as ``model(**inputs)``) is run
once in eval mode without gradients, with forward pre-hooks recording the order of every
module call and the arguments of every block. The cut before block ``k`` is valid when
block ``k``'s first positional (or ``hidden_states``) argument is block ``k - 1``'s output
(or its ``[0]``) and no module is called between the two blocks. All other arguments must
be the same objects for every block (an attention mask, position ids, rotary cos/sin).
Their tensors cross the cut after the hidden state, in argument order, without gradient,
batch-first (one of batch size 1 is expanded), so a data plane can split every crossing
tensor into micro-batches. An argument named ``*mask`` may be ``None`` (no padding) or a
tensor from batch to batch; ``None`` crosses as an empty ``(batch, 0)`` bool tensor. Other
``None``s, bools, ints, floats and strings are constants held by the parts. Any other
object refuses the split, e.g. a ``DynamicCache``: build the model with
``use_cache=False``.

Parts
-----
* The head runs the model's forward on the inputs and stops when block ``a`` is called;
  it returns the hidden state, the other crossing tensors when the next part is a body,
  and last an int64 tensor of row tags (``call << 32 | row``).
* A body runs its blocks directly on what it receives, with its constants, and passes the
  tags on.
* The tail runs the model's forward again on the inputs of the rows it receives. Head and
  tail live on the same client: the head keeps its inputs until the tail has answered all
  their rows and the tail finds them by the tags, so micro-batches may come back in any
  order (the inputs of at most 64 head calls wait). In the tail, modules owned by other
  parts are stubs without weights: a
  block before ``b`` returns the received hidden state, other modules return zeros shaped
  like what they returned in the head; the random-number state is restored before block
  ``b``, so dropout after the cut draws what the unsplit model draws. The tail returns the
  model's output (a ``ModelOutput``; with ``labels`` in the inputs it holds the loss).

Every part's ``state_dict()`` keys are the full model's keys. A parameter or buffer belongs
to the part that calls the module holding it (modules never called go with their nearest
relative); a module called from two parts, and weights tied across parts, refuse the cut
(for tied input and output embeddings build the model with ``tie_word_embeddings=False``).
"""

from __future__ import annotations

import copy
import inspect
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from flsplit.model.parts import attach_state, resolve_cut_names, restore_modes

__all__ = ["BlockAnalysis", "analyze", "is_transformers_model"]

_CONSTANTS = (bool, int, float, str)
_LEAF = None  # the spec of a leaf in _flatten


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` ``PreTrainedModel`` (without importing it)."""
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
        for c in type(model).__mro__
    )


def analyze(model: nn.Module, example_input: Any) -> BlockAnalysis:
    """Probe ``model`` on ``example_input`` (see the module docstring)."""
    if example_input is None:
        raise ValueError(
            f"{type(model).__name__} is split at its blocks by running its forward: "
            "an example input is needed"
        )
    return BlockAnalysis(model, example_input)


class _StopError(Exception):
    """Raised by the head's stub of its first missing block, carrying its arguments."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("stop")
        self.call = (args, kwargs)


def _flatten(value: Any, name: str, leaves: list[tuple[str, Any]]) -> Any:
    """Flatten nested tuples, lists and dicts into ``leaves``; return a spec to rebuild."""
    if type(value) in (tuple, list):
        return (type(value), [_flatten(v, f"{name}[{i}]", leaves) for i, v in enumerate(value)])
    if type(value) is dict:
        return (
            dict,
            [(k, _flatten(v, f"{name}.{k}" if name else k, leaves)) for k, v in value.items()],
        )
    leaves.append((name, value))
    return _LEAF


def _unflatten(spec: Any, leaves: Any) -> Any:
    if spec is _LEAF:
        return next(leaves)
    kind, items = spec
    if kind is dict:
        return {k: _unflatten(s, leaves) for k, s in items}
    return kind(_unflatten(s, leaves) for s in items)


def _arg_names(block: nn.Module) -> list[str]:
    try:
        params = inspect.signature(block.forward).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


class _Layout:
    """Where the hidden state, the crossing tensors and the constants sit in a block call."""

    def __init__(self, call: tuple[tuple, dict], names: list[str]) -> None:
        args, kwargs = call
        self.hidden_kw = not args
        if self.hidden_kw and "hidden_states" not in kwargs:
            raise ValueError(
                "the blocks receive their input neither as their first positional argument "
                "nor as hidden_states"
            )
        rest = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
        named = [
            (names[i + 1] if i + 1 < len(names) else f"args[{i + 1}]") for i in range(len(args) - 1)
        ]
        leaves: list[tuple[str, Any]] = []
        self.spec = (tuple, [_flatten(v, n, leaves) for v, n in zip(rest[0], named, strict=True)])
        self.kwspec = _flatten(rest[1], "", leaves)
        self.names = [n for n, _ in leaves]
        self.kinds: list[Any] = []  # "tensor", "mask" or ("const", value)
        for name, value in leaves:
            if name.endswith("mask") and (value is None or isinstance(value, torch.Tensor)):
                self.kinds.append("mask")  # None for a batch without padding, else a tensor
            elif isinstance(value, torch.Tensor):
                self.kinds.append("tensor")
            elif value is None or isinstance(value, _CONSTANTS):
                self.kinds.append(("const", value))
            else:
                fix = (
                    " (build the model with use_cache=False)"
                    if "Cache" in type(value).__name__
                    else ""
                )
                raise ValueError(
                    f"the blocks receive a {type(value).__name__} as {name!r}; only tensors and "
                    f"None/bool/int/float/str constants can cross a cut{fix}"
                )

    def leaves(self, call: tuple[tuple, dict]) -> list[Any]:
        args, kwargs = call
        rest = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
        leaves: list[tuple[str, Any]] = []
        spec = (tuple, [_flatten(v, "", leaves) for v in rest[0]])
        kwspec = _flatten(rest[1], "", leaves)
        if spec != self.spec or kwspec != self.kwspec:
            raise ValueError(f"the blocks' arguments differ from the example's: {call!r:.200}")
        return [v for _, v in leaves]

    def pack(self, call: tuple[tuple, dict], with_rest: bool, tag: torch.Tensor) -> tuple:
        """The crossing of a captured block call: hidden state, other tensors, row tags."""
        args, kwargs = call
        hidden = kwargs["hidden_states"] if self.hidden_kw else args[0]
        leaves = self.leaves(call)
        for name, kind, value in zip(self.names, self.kinds, leaves, strict=True):
            is_tensor = isinstance(value, torch.Tensor)
            if kind == "mask" and (value is None or is_tensor):
                continue
            if (kind == "tensor") != is_tensor or (not is_tensor and value != kind[1]):
                was = "a tensor" if kind == "tensor" else repr(kind[1])
                raise RuntimeError(
                    f"block argument {name!r} is {type(value).__name__} here but was {was} in "
                    "the example input; split with an example input like the batches (with "
                    "the same keys)"
                )
        if not with_rest:
            return (hidden, tag)
        batch = hidden.shape[0]
        # a missing mask travels as an empty (batch, 0) bool tensor
        none = torch.empty(batch, 0, dtype=torch.bool, device=hidden.device)
        rest = [
            none if v is None else v
            for k, v in zip(self.kinds, leaves, strict=True)
            if k in ("tensor", "mask")
        ]
        # batch first, so that a data plane can split every crossing tensor into micro-batches
        rest = [v.expand(batch, *v.shape[1:]) if v.dim() and len(v) == 1 else v for v in rest]
        return (hidden, *rest, tag)

    def call(self, hidden: torch.Tensor, tensors: Sequence[torch.Tensor]) -> tuple[tuple, dict]:
        it = iter(tensors)
        values = iter(
            [_received(next(it), k) if k in ("tensor", "mask") else k[1] for k in self.kinds]
        )
        args = _unflatten(self.spec, values)
        kwargs = _unflatten(self.kwspec, values)
        if self.hidden_kw:
            return args, {"hidden_states": hidden, **kwargs}
        return (hidden, *args), kwargs


def _received(value: torch.Tensor, kind: str) -> torch.Tensor | None:
    if kind == "mask" and value.dtype == torch.bool and value.dim() == 2 and not value.shape[1]:
        return None
    return value


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("meta", tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_meta(v) for v in value)
    return value


def _zeros(meta: Any, device: torch.device, batch: tuple[int, int]) -> Any:
    """Zeros shaped like ``meta``; a first dimension ``batch[0]`` becomes ``batch[1]``."""
    if isinstance(meta, tuple) and meta[:1] == ("meta",):
        shape = meta[1]
        if shape and shape[0] == batch[0]:
            shape = (batch[1], *shape[1:])
        return torch.zeros(shape, dtype=meta[2], device=device)
    if isinstance(meta, (tuple, list)):
        return type(meta)(_zeros(m, device, batch) for m in meta)
    return meta


def _rows(inputs: Any, rows: torch.Tensor, batch: int) -> Any:
    """The rows ``rows`` of the batch-first tensors in ``inputs`` (a tensor or a mapping)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() and len(inputs) == batch:
            return inputs[rows.to(inputs.device)]
        return inputs
    if isinstance(inputs, Mapping):
        return {k: _rows(v, rows, batch) for k, v in inputs.items()}
    return inputs


class _Context:
    """State shared by a part and its stubs (a plain object: not a module, no state)."""

    def __init__(self) -> None:
        self.metas: dict[str, deque] = {}
        self.batch = (0, 0)  # the head's batch size, the rows answered here
        self.hidden: Any = None
        self.rng: tuple[torch.Tensor, torch.Tensor | None] | None = None


class _StopStub(nn.Module):
    """In the head: the first block it does not hold ends the forward."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise _StopError(args, kwargs)


class _InjectStub(nn.Module):
    """In the tail: a block before the cut returns the received hidden state."""

    def __init__(self, context: _Context, last: bool, as_tuple: bool) -> None:
        super().__init__()
        self.context, self.last, self.as_tuple = context, last, as_tuple

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = self.context.hidden
        if self.last and self.context.rng is not None:  # undo the re-run's random draws
            cpu, cuda = self.context.rng
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, hidden.device)
        return (hidden,) if self.as_tuple else hidden


class _ShapeStub(nn.Module):
    """In the tail: a module of the head returns zeros shaped like its output there."""

    def __init__(self, context: _Context, path: str) -> None:
        super().__init__()
        self.context, self.path = context, path

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        queue = self.context.metas.get(self.path)
        if not queue:
            raise RuntimeError(f"{self.path!r} belongs to another part and cannot run here")
        return _zeros(queue.popleft(), self.context.hidden.device, self.context.batch)


_ROW_BITS = 32
_KEPT = 64  # head calls whose rows the tail has not all answered, at most


class _Inbox:
    """The head's inputs, by call number, until the tail has answered all their rows.

    The head tags every row it sends with ``call << 32 | row`` (an int64 crossing
    tensor without gradient, split with the batch into micro-batches); the tail finds
    the inputs of the rows it receives by their tags, in whatever order they come.
    """

    def __init__(self) -> None:
        self.calls: dict[int, list] = {}  # call -> [inputs, metas, batch, rows left]
        self.count = 0

    def put(self, inputs: Any, metas: dict, batch: int, device: torch.device) -> torch.Tensor:
        self.count += 1
        self.calls[self.count] = [inputs, metas, batch, batch]
        while len(self.calls) > _KEPT:  # heads whose tail never came (an error between)
            del self.calls[next(iter(self.calls))]
        return (self.count << _ROW_BITS) + torch.arange(batch, device=device)

    def take(self, tag: torch.Tensor) -> tuple[Any, dict, tuple[int, int]]:
        if not isinstance(tag, torch.Tensor) or tag.dtype != torch.int64 or tag.dim() != 1:
            raise RuntimeError("the tail takes the hidden state and the row tags the head sent")
        calls = (tag >> _ROW_BITS).unique().tolist()
        if len(calls) != 1 or calls[0] not in self.calls:
            raise RuntimeError(
                f"the tail answers a head call: run the head on this client first (rows of "
                f"head calls {calls}, waiting: {list(self.calls)})"
            )
        entry = self.calls[calls[0]]
        inputs, metas, batch = entry[0], entry[1], entry[2]
        rows = tag & ((1 << _ROW_BITS) - 1)
        entry[3] -= len(rows)
        if entry[3] <= 0:
            del self.calls[calls[0]]
        if len(rows) == batch and bool((rows == torch.arange(batch, device=rows.device)).all()):
            return inputs, metas, (batch, batch)
        metas = {p: deque(q) for p, q in metas.items()}  # other rows may still need them
        return _rows(inputs, rows, batch), metas, (batch, len(rows))


class _HeadMixin:
    """Forward of the head: the model's forward up to the first block of the next part."""

    _flsplit: dict[str, Any]

    def forward(self, inputs: Any) -> Any:
        info = self._flsplit
        metas: dict[str, deque] = {p: deque() for p in info["recorded"]}
        handles = [
            self.get_submodule(p).register_forward_hook(  # type: ignore[attr-defined]
                lambda _m, _a, out, p=p: metas[p].append(_meta(out))
            )
            for p in info["recorded"]
        ]
        try:
            if isinstance(inputs, Mapping):
                super().forward(**inputs)  # type: ignore[misc]
            else:
                super().forward(inputs)  # type: ignore[misc]
        except _StopError as stop:
            call = stop.call
        else:
            raise RuntimeError("the forward returned before reaching the cut")
        finally:
            for handle in handles:
                handle.remove()
        args, kwargs = call
        hidden = kwargs["hidden_states"] if info["layout"].hidden_kw else args[0]
        tag = info["inbox"].put(inputs, metas, len(hidden), hidden.device)
        return info["layout"].pack(call, info["with_rest"], tag)


class _TailMixin:
    """Forward of the tail: the model's forward again, from the first block it holds."""

    _flsplit: dict[str, Any]

    def forward(self, hidden: torch.Tensor, tag: torch.Tensor | None = None) -> Any:
        info = self._flsplit
        inputs, metas, batch = info["inbox"].take(tag)
        context: _Context = info["context"]
        cuda = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        context.metas, context.hidden, context.batch = metas, hidden, batch
        context.rng = (torch.get_rng_state(), cuda)
        try:
            if isinstance(inputs, Mapping):
                return super().forward(**inputs)  # type: ignore[misc]
            return super().forward(inputs)  # type: ignore[misc]
        finally:
            context.metas, context.hidden, context.rng = {}, None, None


_CLASSES: dict[tuple[type, type], type] = {}


def _with_forward(module: nn.Module, mixin: type, info: dict[str, Any]) -> nn.Module:
    """Give ``module`` (a private shallow copy) the forward of ``mixin``."""
    cls = type(module)
    key = (mixin, cls)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{mixin.__name__[1:-5]}{cls.__name__}", (mixin, cls), {})
    module.__class__ = _CLASSES[key]
    object.__setattr__(module, "_flsplit", info)
    return module


class _Body(nn.Module):
    """Blocks ``a .. b-1`` at their original paths, run one after the other."""

    def __init__(self, layout: _Layout, paths: list[str], with_rest: bool, as_tuple: bool) -> None:
        super().__init__()
        self.layout, self.paths, self.with_rest, self.as_tuple = layout, paths, with_rest, as_tuple

    def forward(self, hidden: torch.Tensor, *tensors: torch.Tensor) -> Any:
        for path in self.paths:
            args, kwargs = self.layout.call(hidden, tensors)
            out = self.get_submodule(path)(*args, **kwargs)
            hidden = out[0] if self.as_tuple else out
        return (hidden, *tensors) if self.with_rest else (hidden, tensors[-1])


class BlockAnalysis:
    """Blocks, valid cuts and state ownership of a model, found by one probe run."""

    def __init__(self, model: nn.Module, example_input: Any) -> None:
        self.model = model
        self.full_keys = list(model.state_dict().keys())
        events, calls, outputs = self._probe(example_input)
        self._choose_blocks(events, calls)
        self.layout = _Layout(
            calls[self.blocks[0]], _arg_names(model.get_submodule(self.blocks[0]))
        )
        first = outputs[self.blocks[0]]
        self.as_tuple = isinstance(first, tuple)
        self.regions = self._regions(events)
        self.reasons: dict[int, str] = {}
        for k in range(1, len(self.blocks)):
            before, call = outputs[self.blocks[k - 1]], calls[self.blocks[k]]
            hidden = call[1]["hidden_states"] if self.layout.hidden_kw else call[0][0]
            if hidden is not before and not (isinstance(before, tuple) and hidden is before[0]):
                self.reasons[k] = f"block {k} does not receive block {k - 1}'s output"
            elif self.gaps.get(k - 1):
                self.reasons[k] = f"the forward calls {self.gaps[k - 1]!r} between the blocks"
            else:
                diff = [
                    n
                    for n, a, b in zip(
                        self.layout.names,
                        self.layout.leaves(calls[self.blocks[0]]),
                        self.layout.leaves(call),
                        strict=True,
                    )
                    if a is not b
                    and (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or a != b)
                ]
                if diff:
                    raise ValueError(
                        f"block {k} ({self.blocks[k]}) receives another {diff[0]!r} than "
                        f"block 0; blocks in one part must share their other arguments"
                    )
        self.candidates = [b for k, b in enumerate(self.blocks) if k and k not in self.reasons]

    # -- probe -------------------------------------------------------------------------

    def _probe(self, example_input: Any) -> tuple[list, dict, dict]:
        lists = {
            path: [f"{path}.{n}" if path else n for n, _ in m.named_children()]
            for path, m in self.model.named_modules()
            if isinstance(m, (nn.ModuleList, nn.Sequential))
            and len(m) >= 2
            and len({type(c) for c in m.children()}) == 1
        }
        watched = {p for paths in lists.values() for p in paths}
        events: list[tuple[str, str]] = []
        calls: dict[str, tuple[tuple, dict]] = {}
        outputs: dict[str, Any] = {}
        handles = []
        for path, module in self.model.named_modules(remove_duplicate=False):

            def pre(_m: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
                events.append(("call", path))
                if path in watched:
                    calls.setdefault(path, (args, kwargs))

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            if path in watched:

                def post(_m: nn.Module, _a: tuple, out: Any, path: str = path) -> None:
                    events.append(("end", path))
                    outputs.setdefault(path, out)

                handles.append(module.register_forward_hook(post))
        try:
            with restore_modes(self.model), torch.no_grad():
                self.model.eval()
                if isinstance(example_input, Mapping):
                    self.model(**example_input)
                else:
                    self.model(example_input)
        except Exception as exc:
            raise ValueError(f"example_input does not run through the model: {exc}") from exc
        finally:
            for handle in handles:
                handle.remove()
        self.lists = lists
        return events, calls, outputs

    def _choose_blocks(self, events: list, calls: dict) -> None:
        order = [p for kind, p in events if kind == "call"]
        good = []
        for paths in self.lists.values():
            positions = [i for p in paths for i, q in enumerate(order) if q == p]
            if len(positions) == len(paths) and positions == sorted(positions):
                good.append(paths)
        if not good:
            raise ValueError(
                f"{type(self.model).__name__} has no repeated blocks to cut between (an "
                "nn.ModuleList of modules of one class that forward calls once each, in order)"
            )
        self.blocks = max(good, key=len)
        self.index = {p: k for k, p in enumerate(self.blocks)}

    def _regions(self, events: list) -> dict[str, set]:
        """Where each module is called: "pre", block k, or "post" (after the last block)."""
        regions: dict[str, set] = {}
        self.gaps: dict[int, str] = {}
        region: Any = "pre"
        for kind, path in events:
            if kind == "end" and path in self.index:
                k = self.index[path]
                region = "post" if k == len(self.blocks) - 1 else ("gap", k)
            elif kind == "call":
                if path in self.index:
                    region = self.index[path]
                elif isinstance(region, tuple):
                    self.gaps.setdefault(region[1], path)
                regions.setdefault(path, set()).add(region)
        return regions

    # -- cuts --------------------------------------------------------------------------

    def resolve(self, cuts: Sequence[str | int] | None) -> tuple[str, ...]:
        return resolve_cut_names(
            cuts, self.candidates, self._canonical, self._why_invalid, self.index.__getitem__
        )

    def _canonical(self, cut: str) -> str | None:
        return cut if cut in self.candidates else None

    def _why_invalid(self, cut: str) -> str:
        k = self.index.get(cut)
        if k is not None:
            return self.reasons.get(k, "the first block stays in the head")
        return (
            f"not a block of {type(self.model).__name__} (its blocks are "
            f"{self.blocks[0].rpartition('.')[0] or 'top-level'}.*)"
        )

    # -- parts -------------------------------------------------------------------------

    def _owners(self, ks: list[int]) -> dict[str, int]:
        """The part of every state key; refuse modules and tied weights used by two parts."""

        def part(region: Any) -> int:
            if region == "pre":
                return 0
            if region == "post":
                return len(ks)
            k = region if isinstance(region, int) else region[1]
            return sum(1 for c in ks if c <= k)

        owner: dict[str, int] = {}
        for key in self.full_keys:
            path = key.rpartition(".")[0]
            parts = {part(r) for r in self.regions.get(path, ())}
            if len(parts) > 1:
                raise ValueError(
                    f"{path!r} is called by parts {sorted(parts)}: its weights would be "
                    "needed on both sides of a cut"
                )
            if parts:
                owner[key] = parts.pop()
        for key in self.full_keys:  # never called: the part of the nearest relative
            if key not in owner:
                best = max(owner, default=None, key=lambda o, key=key: _shared(key, o))
                owner[key] = owner[best] if best is not None else 0
        tied: dict[int, list[str]] = {}
        for key, value in self.model.state_dict(keep_vars=True).items():
            tied.setdefault(id(value), []).append(key)
        for keys in tied.values():
            if len({owner[k] for k in keys}) > 1:
                raise ValueError(
                    f"{' and '.join(map(repr, keys))} are the same tensor (tied weights) in "
                    "different parts; build the model with tie_word_embeddings=False (or untie "
                    "them)"
                )
        return owner

    def parts_for(self, names: Sequence[str]) -> list[nn.Module]:
        """Build the parts for the canonical cut names ``names``."""
        ks = [self.index[n] for n in names]
        owner = self._owners(ks)
        self.under: dict[str, set[int]] = {}
        for key, p in owner.items():
            atoms = key.split(".")
            for i in range(len(atoms)):
                self.under.setdefault(".".join(atoms[:i]), set()).add(p)
        self.owner = owner
        last = len(ks)
        recorded = sorted(
            {
                path
                for path, parts in self.under.items()
                if path
                and last not in parts
                and path not in self.index
                and self.under.get(path.rpartition(".")[0], set()) >= {last}
            }
        )  # maximal subtrees the tail holds no state of: it runs them as stubs
        inbox = _Inbox()
        parts: list[nn.Module] = []
        head = self._skeleton(self.model, "", 0, ks, None)
        parts.append(
            _with_forward(
                head,
                _HeadMixin,
                {
                    "recorded": [p for p in recorded if self._is_real(head, p)],
                    "inbox": inbox,
                    "layout": self.layout,
                    "with_rest": last > 1,
                },
            )
        )
        for i in range(1, last):
            body = _Body(self.layout, self.blocks[ks[i - 1] : ks[i]], i + 1 < last, self.as_tuple)
            for path in body.paths:
                _attach_module(body, path, self.model.get_submodule(path))
            for key, p in owner.items():
                if p == i and not any(key.startswith(f"{b}.") for b in body.paths):
                    attach_state(body, key, self.model)
            parts.append(body)
        context = _Context()
        tail = self._skeleton(self.model, "", last, ks, context)
        parts.append(_with_forward(tail, _TailMixin, {"inbox": inbox, "context": context}))
        source = dict(self.model.named_modules())
        for part in parts:  # start in the model's (possibly mixed) train/eval modes
            for name, module in part.named_modules():
                if name in source:
                    module.training = source[name].training
        return parts

    @staticmethod
    def _is_real(part: nn.Module, path: str) -> bool:
        try:
            return not isinstance(part.get_submodule(path), (_ShapeStub, _StopStub, _InjectStub))
        except AttributeError:
            return False

    def _skeleton(
        self, module: nn.Module, path: str, k: int, ks: list[int], context: _Context | None
    ) -> nn.Module:
        """``module`` as part ``k`` holds it: own state real, other parts' modules stubbed."""
        if path in self.index:
            i = self.index[path]
            if sum(1 for c in ks if c <= i) != k:
                if context is None:
                    return _StopStub()
                return _InjectStub(context, i == ks[-1] - 1, self.as_tuple)
        parts = self.under.get(path, set())
        if not parts:
            return copy.deepcopy(module)  # no state: a private copy
        if parts == {k}:
            return module
        if k not in parts:
            return _ShapeStub(context, path) if context is not None else _StopStub()
        clone = copy.copy(module)
        clone._modules = {
            name: self._skeleton(child, f"{path}.{name}" if path else name, k, ks, context)
            for name, child in module._modules.items()
            if child is not None
        }
        clone._parameters, clone._buffers = {}, {}
        clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            setattr(clone, attr, type(getattr(module, attr))(getattr(module, attr)))
        for name, value in [*module._parameters.items(), *module._buffers.items()]:
            key = f"{path}.{name}" if path else name
            if value is None or self.owner.get(key, k) == k:
                (clone._parameters if isinstance(value, nn.Parameter) else clone._buffers)[name] = (
                    value
                )
            else:  # read by the re-run forward, owned elsewhere: not state here
                clone._buffers[name] = value.detach()
                clone._non_persistent_buffers_set.add(name)
        return clone


def _shared(a: str, b: str) -> int:
    """How many leading path atoms ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def _attach_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Install ``module`` in ``root`` at ``path``, creating empty parents."""
    owner = root
    *parents, name = path.split(".")
    for atom in parents:
        child = owner._modules.get(atom)
        if child is None:
            child = nn.Module()
            owner.add_module(atom, child)
        owner = child
    owner.add_module(name, module)
