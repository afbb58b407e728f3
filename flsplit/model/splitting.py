"""Split a ``torch.nn.Module`` into sequential parts (head, body, tail) at named cut points.

A cut is named after a module, with the meaning of
``torch.distributed.pipelining.SplitPoint.BEGINNING``: the cut ``"layer2"`` makes ``layer2``
the first module of the next part. Cuts may also be given as indices into
:func:`candidate_cuts`. The default is the U-shape used by flsplit: two cuts, so that the
client keeps the first block (head) and the last block (tail) and a helper runs the rest
(body).

Every part is a :class:`torch.fx.GraphModule` whose submodules sit at the same qualified
paths as in the original model, so ``part.state_dict()`` keys are the full model's
``state_dict`` keys, and the parts' key sets partition the full key set.

Which splitter, and why
-----------------------
Two splitters share this API. Models that ``torch.fx.symbolic_trace`` traces are split here,
in the traced graph (any module boundary can be a cut). ``transformers`` models, and models
fx cannot trace (when an example input is given), are split by :mod:`flsplit.model.blocks`
between their repeated blocks by running the model's own forward: ``transformers`` 5 has
no fx tracer of its own and ``symbolic_trace`` fails in its mask code ("co_varnames is too
small"); ``torch.export`` would freeze dropout's training flag (below). The split of a
model that fx traces is unchanged by the block splitter's existence.

The fx parts are built with :mod:`torch.fx`, not with ``torch.distributed.pipelining``.
``pipelining.pipeline(...)`` traces the model with ``torch.export``, which lowers every
``nn.BatchNorm`` and ``nn.Dropout`` call to an ATen op whose ``training`` flag is a constant
of the graph. Checked with torch 2.14 on ResNet-18 and VGG-11: the exported stage modules
call ``aten.batch_norm(..., True, ...)`` and ``aten.dropout(x, 0.5, True)`` whatever
``.eval()`` says, so evaluation of the stages differs from ``model.eval()`` (max abs
difference 2.05 in the ResNet-18 logits); the stages also share tensors with the model.
Their train-mode gradients matched the full model exactly, but a split that is wrong in
eval mode is not usable for federated evaluation.

:func:`torch.fx.symbolic_trace` keeps ``torch.nn`` leaf modules (convolutions, BatchNorm,
Dropout, ...) as ``call_module`` nodes, so they keep reading ``self.training`` at run time.
The model is traced once into a flat graph; each segment of that graph between two cuts is
copied into its own graph, and ``GraphModule(root, graph)`` installs exactly the submodules
and attributes that segment uses under their original qualified names. The model is traced
in train and in eval mode; if the two graphs differ (Python code outside leaf modules that
branches on ``self.training``), splitting is refused, because such a branch would be
frozen into the parts.

Which cuts are valid
--------------------
A position in the flat graph is a valid cut when at least one tensor crosses it and no
parameter or buffer is used on both sides (so weights tied across the cut are refused).
One crossing tensor travels bare (part ``i`` returns it, part ``i + 1`` takes it); several
travel as a tuple in graph order (part ``i + 1`` takes them as separate arguments).
Several values may cross only *between blocks*: where no module other than the root and
``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict`` containers is running, or at the
start of one of several same-class blocks held by a container. Cuts inside a residual
block (block input and branch output both cross) are therefore refused.

:func:`candidate_cuts` lists valid cuts at *block* granularity: the children of the model,
where containers and single-child wrappers are expanded into their children, plus the
children of every container, at any depth, that holds two or more blocks of one class
(ViT's ``encoder.layers.encoder_layer_1``, ResNet's ``layer1.1``). Any other module that
starts at a valid position (e.g. ``"features.0.1"``) is accepted by name as well; a
name is reported as the outermost module starting at its position (``"layer2.0"`` ->
``"layer2"``). Modules called more than once cannot name a cut (the name is ambiguous).

When an example input is given, the traced graph is run once on it (in eval mode, without
gradients, restoring every module's mode afterwards, so the model is not changed) to check
what crosses each cut. A crossing ``None``, bool, int, float or str is a constant: the next
part holds it and it never travels; it must be the same for a batch of one and of two
(an int such as ``x.size(0)`` is refused); any other non-tensor value refuses the cut.
Without an example input every crossing value is taken to be a tensor. The run also finds
parts that modify an input in place (e.g. a body starting with ``nn.ReLU(inplace=True)``);
such a part clones that input first, so a data plane may feed it
``activation.detach().requires_grad_()``.

Limitations: the model takes one positional tensor input (dimension 0 is the batch) and
must be traceable by ``torch.fx.symbolic_trace`` (no data-dependent Python control flow).
Models that do not trace, and every ``transformers`` model, are split at the boundaries of
their repeated blocks by :mod:`flsplit.model.blocks` instead (see :func:`split_model`).
Hooks registered on non-leaf modules (e.g. on a whole residual block) are not carried
into the parts, because fx inlines those modules; hooks on leaf modules are kept.
"""

from __future__ import annotations

import copy
import operator
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from flsplit.model.parts import SplitModel, attach_state, resolve_cut_names, restore_modes

__all__ = [
    "SplitModel",
    "candidate_cuts",
    "part_state_keys",
    "resolve_cuts",
    "split_model",
]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_INPLACE_FUNCTIONS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.imatmul,
    operator.setitem,
}


# --------------------------------------------------------------------------- public API


def candidate_cuts(model: nn.Module, example_input: Any = None) -> list[str]:
    """List the block-level cut points of ``model`` in execution order.

    Parameters
    ----------
    model : nn.Module
        The model; it is not modified. Traced with fx, or split at its blocks (module
        docstring).
    example_input : torch.Tensor or Mapping of str to torch.Tensor, optional
        Input used to check what crosses each cut. Without it only the fx graph
        structure is checked; block splitting needs it (a mapping is passed as
        ``model(**example_input)``).

    Returns
    -------
    list of str
        Module names; cutting at name ``m`` makes ``m`` start the next part. The first
        module is never listed.
    """
    return list(_analyze(model, example_input).candidates)


def resolve_cuts(
    model: nn.Module,
    cuts: Sequence[str | int] | None,
    example_input: Any = None,
) -> tuple[str, ...]:
    """Turn cut names or candidate indices into canonical cut names.

    Parameters
    ----------
    model : nn.Module
        The model to split; it is not modified.
    cuts : sequence of str or int, or None
        Module names or indices into :func:`candidate_cuts` (negative indices count from
        the end), in execution order. ``None`` gives the default U-shape: two cuts, after
        the first block and before the last block (``candidates[0]``, ``candidates[-1]``).
    example_input : torch.Tensor or Mapping of str to torch.Tensor, optional
        See :func:`candidate_cuts`.

    Returns
    -------
    tuple of str
        Canonical names (outermost module starting at each cut).

    Raises
    ------
    ValueError
        For an unknown or invalid name, an out-of-range index, duplicate or out-of-order
        cuts, or (for ``None``) a model with fewer than two candidate cuts. The message
        names the bad value and lists the valid cuts.
    """
    return _analyze(model, example_input).resolve(cuts)


def split_model(
    model: nn.Module,
    cuts: Sequence[str | int] | None = None,
    example_input: Any = None,
    *,
    share_weights: bool = False,
) -> SplitModel:
    """Split ``model`` into ``len(cuts) + 1`` sequential parts.

    Parameters
    ----------
    model : nn.Module
        Model traceable by ``torch.fx.symbolic_trace`` with one positional tensor input,
        or a model with repeated blocks (:mod:`flsplit.model.blocks`).
    cuts : sequence of str or int, or None
        See :func:`resolve_cuts`; ``None`` gives head, body and tail.
    example_input : torch.Tensor or Mapping of str to torch.Tensor, optional
        Example input (any batch size; the parts accept any batch size). Recommended:
        it enables the checks described in the module docstring; block splitting
        needs it.
    share_weights : bool, default False
        If False the parts own a deep copy of the model's parameters and buffers; if True
        they use the model's own modules and tensors (training the parts trains
        ``model``).

    Returns
    -------
    SplitModel
        Parts whose modules are in the same train/eval mode as the model's.
    """
    source = model if share_weights else copy.deepcopy(model)
    analysis = _analyze(source, example_input)
    names = analysis.resolve(cuts)
    parts = analysis.parts_for(names)
    return SplitModel(
        cuts=names, parts=parts, full_keys=tuple(analysis.full_keys), model_type=type(model)
    )


def part_state_keys(
    model: nn.Module,
    cuts: Sequence[str | int] | None = None,
    example_input: Any = None,
) -> list[list[str]]:
    """Return the ``state_dict`` keys of every part, without copying any tensor.

    Parameters
    ----------
    model : nn.Module
        The model; it is not modified.
    cuts : sequence of str or int, or None
        See :func:`resolve_cuts`.
    example_input : torch.Tensor or Mapping of str to torch.Tensor, optional
        See :func:`candidate_cuts`.

    Returns
    -------
    list of list of str
        Keys per part, each in the order of ``model.state_dict()``.
    """
    split = split_model(model, cuts, example_input, share_weights=True)
    return [split.part_keys(i) for i in range(len(split.parts))]


# --------------------------------------------------------------------------- internals


class _Tracer(fx.Tracer):
    """fx's tracer, keeping ``peft`` adapter layers (LoRA's ``Linear``, ...) whole: their
    forward loops over the active adapters in Python, which fx cannot trace."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        tuners = sys.modules.get("peft.tuners.tuners_utils")  # peft only if the model uses it
        if tuners is not None and isinstance(m, tuners.BaseTunerLayer):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` with fx in train and eval mode and check both graphs agree."""
    before = set(vars(model))
    traced: list[fx.GraphModule] = []
    with restore_modes(model):
        for mode in (True, False):
            model.train(mode)
            try:
                graph = _Tracer().trace(model)
                traced.append(fx.GraphModule(model, graph, class_name=type(model).__name__))
            except Exception as exc:  # fx raises many exception types
                raise _TraceError(
                    f"cannot trace {type(model).__name__} with torch.fx.symbolic_trace: {exc}"
                ) from exc
            finally:
                # the tracer stores tensor constants on the root; the GraphModule has them
                for attr in set(vars(model)) - before:
                    delattr(model, attr)
    if traced[0].code != traced[1].code:
        raise ValueError(
            f"{type(model).__name__}.forward depends on self.training outside torch.nn leaf "
            "modules; such a branch would be frozen into the parts (use nn.Dropout / "
            "nn.BatchNorm modules instead of functional calls with training=self.training)"
        )
    return traced[0]


def _is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Guess statically whether ``node`` modifies its first argument in place."""
    if node.op == "call_module":
        return bool(getattr(modules.get(str(node.target)), "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return (name.endswith("_") and not name.endswith("__")) or bool(
            node.kwargs.get("inplace", False)
        )
    return False


class _Analysis:
    """Flat fx graph of a model plus everything needed to validate and apply cuts."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor | None) -> None:
        self.model = model
        self.gm = _trace(model)
        graph_nodes = list(self.gm.graph.nodes)
        self.output = graph_nodes[-1]
        self.nodes = graph_nodes[:-1]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.index[self.output] = len(self.nodes)
        self.modules = dict(self.gm.named_modules())
        self.full_keys = list(model.state_dict().keys())
        self._find_module_starts()
        self._find_valid_positions()
        self.mutated: set[tuple[int, fx.Node]] = set()
        self.constants: dict[fx.Node, Any] = {}  # non-tensor crossings seen in the example
        if example_input is not None:
            self._run_example(example_input)
        self.names = self._name_positions()
        self.candidates = self._block_candidates()

    # -- structure ---------------------------------------------------------------------

    def _find_module_starts(self) -> None:
        self.starts: dict[str, int] = {}
        self.ends: dict[str, int] = {}
        calls: dict[str, set[str]] = {}
        for i, node in enumerate(self.nodes):
            for key, (path, _) in node.meta.get("nn_module_stack", {}).items():
                self.starts.setdefault(path, i)
                self.ends[path] = i
                calls.setdefault(path, set()).add(key)
        self.calls = {path: len(keys) for path, keys in calls.items()}
        # children of containers holding >= 2 blocks of one class (repeated blocks)
        self.repeated: list[str] = []
        for path, module in self.model.named_modules():
            children = list(module.named_children())
            kinds = {type(c) for _, c in children}
            if (
                isinstance(module, _CONTAINERS)
                and len(children) >= 2
                and len(kinds) == 1
                and any(True for _ in children[0][1].children())
            ):
                self.repeated += [f"{path}.{n}" if path else n for n, _ in children]
        self.block_starts = {self.starts[b] for b in self.repeated if self.calls.get(b) == 1}

    def _inside_block(self, p: int) -> str | None:
        """The innermost non-container module running across position ``p``, if any."""
        if p in self.block_starts:
            return None  # a boundary between repeated blocks
        inner = [
            path
            for path, start in self.starts.items()
            if path and start < p <= self.ends[path]
            and not isinstance(self.modules.get(path), _CONTAINERS)
        ]
        return max(inner, key=lambda s: s.count("."), default=None)

    def _state_ids(self, node: fx.Node) -> set[int]:
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            return {id(t) for t in module.state_dict(keep_vars=True).values()}
        if node.op == "get_attr":
            value = self._attr(str(node.target))
            return {id(value)} if id(value) in self.state_tensor_ids else set()
        return set()

    def _attr(self, target: str) -> Any:
        owner, _, name = target.rpartition(".")
        return getattr(self.gm.get_submodule(owner) if owner else self.gm, name)

    def _find_valid_positions(self) -> None:
        """Valid positions (boundary before ``nodes[p]``) and the values crossing them."""
        self.state_tensor_ids = {id(t) for t in self.model.state_dict(keep_vars=True).values()}
        n = len(self.nodes)
        last_use = [max((self.index[u] for u in node.users), default=-1) for node in self.nodes]
        # first/last position at which each state tensor is used
        span: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for tid in self._state_ids(node):
                span.setdefault(tid, [i, i])[1] = i
        blocked = [False] * (n + 1)
        for first, last in span.values():
            for p in range(first + 1, last + 1):
                blocked[p] = True
        self.crossing: dict[int, tuple[fx.Node, ...]] = {}
        self.reasons: dict[int, str] = {}
        live: dict[fx.Node, int] = {}  # values computed before p and used at or after p
        for p in range(1, n):
            node = self.nodes[p - 1]
            if node.op != "get_attr" and last_use[p - 1] >= p:
                live[node] = last_use[p - 1]
            for done in [v for v, last in live.items() if last < p]:
                del live[done]
            block = self._inside_block(p) if len(live) > 1 else None
            if blocked[p]:
                self.reasons[p] = "a parameter or buffer is used on both sides"
            elif not live:
                self.reasons[p] = "no value crosses it"
            elif block is not None:
                self.reasons[p] = (
                    f"{len(live)} values cross it inside {block!r} (e.g. a residual block); "
                    "several values may cross only between blocks"
                )
            else:
                self.crossing[p] = tuple(live)  # in graph order

    def _probe(self, example_input: torch.Tensor) -> dict[tuple[int, fx.Node], tuple[Any, int]]:
        """Run the graph once in eval mode; return each crossing value and its version."""
        analysis = self
        seen: dict[tuple[int, fx.Node], tuple[Any, int]] = {}

        class _Probe(fx.Interpreter):
            def run_node(self, node: fx.Node) -> Any:
                p = analysis.index[node]
                for crossing in analysis.crossing.get(p, ()):
                    value = self.env[crossing]
                    version = value._version if isinstance(value, torch.Tensor) else -1
                    seen[(p, crossing)] = (value, version)
                return super().run_node(node)

        with restore_modes(self.gm), torch.no_grad():
            self.gm.eval()
            try:
                _Probe(self.gm).run(example_input)
            except Exception as exc:
                raise ValueError(f"example_input does not run through the model: {exc}") from exc
        return seen

    def _refuse(self, p: int, reason: str) -> None:
        self.crossing.pop(p, None)
        self.reasons[p] = reason

    def _run_example(self, example_input: torch.Tensor) -> None:
        """Find non-tensor crossings (constants or refused) and in-place consumers."""
        if example_input.dim() > 0 and example_input.size(0) > 1:
            example_input = example_input[:1]  # one sample is enough for these checks
        seen = self._probe(example_input)
        for (p, node), (value, version) in seen.items():
            if isinstance(value, torch.Tensor):
                if value._version != version:
                    self.mutated.add((p, node))
            elif value is None or isinstance(value, (bool, int, float, str)):
                self.constants[node] = value
            else:
                self._refuse(p, f"a {type(value).__name__} crosses it (only tensors and "
                             "None/bool/int/float/str constants can)")  # fmt: skip
        if self.constants and example_input.dim() > 0:
            # a constant must not depend on the input: compare with a batch of two
            again = self._probe(torch.cat([example_input, example_input]))
            for (p, node), (value, _) in again.items():
                if node in self.constants and value != self.constants[node]:
                    self._refuse(p, f"the {type(value).__name__} {node.name!r} crossing it "
                                 "depends on the input (e.g. its batch size)")  # fmt: skip
        for p, nodes in list(self.crossing.items()):
            if all(n in self.constants for n in nodes):
                self._refuse(p, "no tensor crosses it")

    def _name_positions(self) -> dict[str, int]:
        """Map every module name that can name a valid cut to its position."""
        first = min(self.starts.values(), default=0)
        by_position: dict[int, list[str]] = {}
        for path, p in self.starts.items():
            if path and self.calls[path] == 1 and p > first and p in self.crossing:
                by_position.setdefault(p, []).append(path)
        self.canonical = {
            p: min(paths, key=lambda s: (s.count("."), s)) for p, paths in by_position.items()
        }
        return {path: p for p, paths in by_position.items() for path in paths}

    def _block_candidates(self) -> list[str]:
        blocks: list[str] = []

        def expand(module: nn.Module, prefix: str) -> None:
            children = list(module.named_children())
            for name, child in children:
                path = f"{prefix}{name}"
                wrapper = len(children) == 1 and any(True for _ in child.children())
                if type(child) in _CONTAINERS or wrapper:
                    expand(child, f"{path}.")
                else:
                    blocks.append(path)

        expand(self.model, "")
        blocks += self.repeated
        positions = sorted({self.names[b] for b in blocks if b in self.names})
        return [self.canonical[p] for p in positions]

    # -- cuts --------------------------------------------------------------------------

    def _why_invalid(self, name: str) -> str:
        if not name:
            return "the empty name is the whole model"
        if name not in self.starts:
            if name in dict(self.model.named_modules()):
                return "module is never called in forward"
            return "no module of that name"
        if self.calls[name] > 1:
            return f"module is called {self.calls[name]} times"
        p = self.starts[name]
        if p <= min(self.starts.values()):
            return "it starts the model"
        return self.reasons.get(p, "not a valid cut")

    def resolve(self, cuts: Sequence[str | int] | None) -> tuple[str, ...]:
        return resolve_cut_names(
            cuts,
            self.candidates,
            lambda cut: self.canonical[self.names[cut]] if cut in self.names else None,
            self._why_invalid,
            self.names.__getitem__,
        )

    # -- parts -------------------------------------------------------------------------

    def parts_for(self, names: Sequence[str]) -> list[nn.Module]:
        return self.build_parts([self.names[n] for n in names])

    def build_parts(self, positions: list[int]) -> list[nn.Module]:
        bounds = [0, *positions, len(self.nodes)]
        parts: list[nn.Module] = []
        for k in range(len(bounds) - 1):
            parts.append(self._build_segment(k, bounds[k], bounds[k + 1], k == len(bounds) - 2))
        self._fix_state(parts)
        # Every module of a part sits at its path in the model: copy the modes, so the
        # parts start in the model's (possibly mixed) train/eval state.
        source = dict(self.model.named_modules())
        for part in parts:
            for name, module in part.named_modules():
                if name in source:
                    module.training = source[name].training
        return parts

    def _build_segment(self, k: int, start: int, stop: int, last: bool) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, Any] = {}

        def lookup(node: fx.Node) -> fx.Node:
            if node not in env:
                if node.op != "get_attr":
                    raise RuntimeError(f"value {node.name} crosses a cut")  # pragma: no cover
                env[node] = graph.get_attr(str(node.target))
            return env[node]

        for crossing in self.crossing[start] if start > 0 else ():
            if crossing in self.constants:  # held by the part, never sent
                env[crossing] = self.constants[crossing]
                continue
            value = graph.placeholder(crossing.name, type_expr=torch.Tensor)
            inplace = any(
                _is_inplace(u, self.modules) and u.args and u.args[0] is crossing
                for u in crossing.users
                if self.index[u] >= start
            )
            if inplace or (start, crossing) in self.mutated:
                value = graph.call_method("clone", (value,))
            env[crossing] = value
        for node in self.nodes[start:stop]:
            if node.op != "get_attr":
                env[node] = graph.node_copy(node, lookup)
        if last:
            graph.output(fx.map_arg(self.output.args[0], lookup))
        else:
            sent = [lookup(n) for n in self.crossing[stop] if n not in self.constants]
            graph.output(sent[0] if len(sent) == 1 else tuple(sent))
        graph.lint()
        return fx.GraphModule(self.gm, graph, class_name=f"Part{k}")

    def _fix_state(self, parts: list[nn.Module]) -> None:
        """Make the parts' keys partition the model's keys."""
        full = set(self.full_keys)
        covered: list[set[str]] = []
        for part in parts:
            for key in set(part.state_dict().keys()) - full:
                # e.g. a tensor constant of the trace: keep it, but out of the state dict
                owner_name, _, attr = key.rpartition(".")
                owner = part.get_submodule(owner_name) if owner_name else part
                owner.register_buffer(attr, getattr(owner, attr), persistent=False)
            covered.append(set(part.state_dict().keys()))
        unused = [k for k in self.full_keys if not any(k in c for c in covered)]
        for key in unused:
            # state never used in forward: give it to the part holding its nearest relative
            def shared(other: str, key: str = key) -> int:
                n = 0
                for a, b in zip(key.split("."), other.split("."), strict=False):
                    if a != b:
                        break
                    n += 1
                return n

            scores = [max((shared(o) for o in c), default=0) for c in covered]
            target = scores.index(max(scores))
            attach_state(parts[target], key, self.model)
            covered[target].add(key)


class _TraceError(ValueError):
    """``torch.fx.symbolic_trace`` failed on the model."""


def _analyze(model: nn.Module, example_input: Any) -> Any:
    """fx analysis, or block analysis for transformers models and models fx cannot trace."""
    from flsplit.model import blocks

    if blocks.is_transformers_model(model):
        return blocks.analyze(model, example_input)
    try:
        return _Analysis(model, example_input)
    except _TraceError as exc:
        if example_input is None:
            raise
        try:
            return blocks.analyze(model, example_input)
        except ValueError as err:
            raise ValueError(f"{exc}; and splitting at its blocks failed: {err}") from err


def parse_cuts(cuts: str | Iterable[str | int] | None) -> tuple[str | int, ...] | None:
    """Turn ``"conv2,fc2"`` or ``"1,5"`` (run-config style) into cut names or indices."""
    if cuts is None:
        return None
    if isinstance(cuts, str):
        items = [c.strip() for c in cuts.split(",") if c.strip()]
        if not items:
            return None
        return tuple(int(c) if c.lstrip("-").isdigit() else c for c in items)
    return tuple(cuts)
