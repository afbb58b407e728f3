"""The model's costs as the server measures them on its own machine.

Before planning, the server runs one batch through the model split at the run config's
cuts (:func:`part_costs`, giving :class:`PartCosts`), or, with candidate cut pairs
(run config ``cut-candidates``, :func:`cut_pairs`), through every segment those pairs
need (:func:`cut_costs`, giving :class:`CutCosts`). The planner scales these times by
each node's speed factor.

torch and the task are imported where they are used, so the planner's modules can use
:class:`PartCosts` and :class:`CutCosts` without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flsplit.config import RunConfig
from flsplit.plan.cuts.problem import LayerProfile, NodeCosts, layer_profile

if TYPE_CHECKING:
    from flsplit.task import SplitTask

#: Memory (MiB) standing for "unknown / unlimited".
UNLIMITED_MIB = 1e12
#: Smallest time (ms) of a profiled segment; a measured 0 would read as "no data".
MIN_SEGMENT_MS = 1e-4


@dataclass(frozen=True)
class PartCosts:
    """One batch through the parts, measured once on the server's machine.

    Times in ms; ``cut1_bytes`` and ``cut2_bytes`` are the activation sizes at the cuts
    (their gradients have the same size); ``body_memory_mib`` is what a helper needs to
    hold one client's body. ``cut1_shapes`` and ``cut2_shapes`` are the shapes of the
    floating-point tensors crossing each cut (empty where unknown): a codec's bytes
    besides the values (:meth:`~flsplit.config.CodecSetting.fixed_bytes`, ``int8``'s
    scales) depend on them.
    """

    head_fwd_ms: float
    head_bwd_ms: float
    body_fwd_ms: float
    body_bwd_ms: float
    tail_ms: float
    cut1_bytes: int
    cut2_bytes: int
    body_memory_mib: float
    cut1_shapes: tuple[tuple[int, ...], ...] = ()
    cut2_shapes: tuple[tuple[int, ...], ...] = ()


def _cut_names(cuts: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in cuts.split(",") if c.strip())


@dataclass(frozen=True)
class CutCosts:
    """Per-segment costs measured once on the server's machine, for candidate cut pairs.

    The model is profiled with a boundary at every cut any candidate pair (or the
    default pair) uses: segment 0 runs up to the first boundary, segment ``i`` starts at
    ``boundaries[i - 1]``. A pair ``"a,b"`` is the cut pair ``(c1, c2)`` of the planner's
    builder with ``c1 = boundaries.index(a) + 1`` (likewise ``c2``).

    Attributes
    ----------
    profile : LayerProfile
        Segment sizes and the server's times (its only device column).
    boundaries : tuple of str
        Cut names, in execution order.
    candidates : tuple of str
        The candidate pairs (``"a,b"``) the optimizing planners choose from.
    default : str
        The default pair (kept by the baselines,
        :data:`flsplit.server.round_planner.FIXED_CUT_METHODS`).
    """

    profile: LayerProfile
    boundaries: tuple[str, ...]
    candidates: tuple[str, ...]
    default: str

    @classmethod
    def from_profile(
        cls, profile: Mapping[str, Any], candidates: Sequence[str], default: str
    ) -> CutCosts:
        """Costs from a profile of :func:`flsplit.model.profile.profile_model` (layer names
        ``[first child, *boundaries]``, one device column).

        Raises
        ------
        ValueError
            When a pair is not two boundaries of the profile in execution order.
        """
        data = dict(profile)
        column = dict(next(iter(data["devices"].values())))
        for key in ("forward_ms", "backward_ms", "update_ms"):
            column[key] = [max(float(v), MIN_SEGMENT_MS) for v in column[key]]
        data["devices"] = {"server": column}
        parsed = layer_profile(data)
        boundaries = tuple(str(layer["name"]) for layer in data["layers"][1:])
        costs = cls(parsed, boundaries, tuple(candidates), default)
        for pair in (*costs.candidates, default):
            costs.pair(pair)
        if not costs.candidates:
            raise ValueError("cut candidates: none given")
        return costs

    def pair(self, cuts: str) -> tuple[int, int]:
        """The builder's ``(c1, c2)`` of the pair ``"a,b"``."""
        names = _cut_names(cuts)
        if len(names) != 2 or any(n not in self.boundaries for n in names):
            raise ValueError(
                f"cut pair {cuts!r}: expected two of the profiled cuts "
                f"({', '.join(self.boundaries)})"
            )
        c1, c2 = (self.boundaries.index(n) + 1 for n in names)
        if c1 >= c2:
            raise ValueError(f"cut pair {cuts!r}: cuts must be distinct and in execution order")
        return c1, c2

    @property
    def pairs(self) -> np.ndarray:
        """``P x 2`` builder pairs of :attr:`candidates`."""
        return np.array([self.pair(c) for c in self.candidates], dtype=int).reshape(-1, 2)

    def _times(self) -> tuple[np.ndarray, np.ndarray]:
        column = next(iter(self.profile.devices.values()))
        fwd = np.asarray(column["forward_ms"], dtype=float)
        bwd = np.asarray(column["backward_ms"], dtype=float)
        return fwd, bwd + np.asarray(column["update_ms"], dtype=float)

    def part_costs(self, cuts: str) -> PartCosts:
        """Head, body and tail costs on the server's machine for the pair ``cuts``."""
        c1, c2 = self.pair(cuts)
        fwd, bwd = self._times()
        activation = self.profile.activation_kib
        return PartCosts(
            head_fwd_ms=float(fwd[:c1].sum()),
            head_bwd_ms=float(bwd[:c1].sum()),
            body_fwd_ms=float(fwd[c1:c2].sum()),
            body_bwd_ms=float(bwd[c1:c2].sum()),
            tail_ms=float(fwd[c2:].sum() + bwd[c2:].sum()),
            cut1_bytes=int(activation[c1 - 1] * 1024),
            cut2_bytes=int(activation[c2 - 1] * 1024),
            body_memory_mib=self.profile.memory_mib(c1, c2),
        )

    def body_weights_kib(self, cuts: str) -> float:
        """Parameter size of the body of the pair ``cuts`` (0: the helper trains nothing)."""
        c1, c2 = self.pair(cuts)
        return float(self.profile.weights_kib[c1:c2].sum())

    def client_memory_mib(self, cuts: str) -> float:
        """Memory a client needs for the head and tail of the pair ``cuts``."""
        c1, c2 = self.pair(cuts)
        return self.profile.memory_mib(0, c1) + self.profile.memory_mib(c2, self.num_segments)

    @property
    def num_segments(self) -> int:
        """Number of profiled segments."""
        return self.profile.num_layers

    def node(self, name: str, factor: float, memory_mib: float) -> NodeCosts:
        """Costs of a node ``factor`` times slower than the server, for the builder."""
        column = next(iter(self.profile.devices.values()))
        memory = memory_mib if np.isfinite(memory_mib) else UNLIMITED_MIB
        return NodeCosts.from_layers(
            name,
            [factor * v for v in column["forward_ms"]],
            [factor * v for v in column["backward_ms"]],
            [factor * v for v in column["update_ms"]],
            memory,
        )


def part_costs(task: SplitTask, config: Mapping[str, Any], split: Any) -> PartCosts:
    """Measure one batch through head, body and tail on this machine.

    Parameters
    ----------
    task : SplitTask
        Model and example input.
    config : Mapping
        Run config (``batch-size``).
    split : SplitModel
        The model split at the cuts to measure.

    Returns
    -------
    PartCosts
        Times of one batch (backward includes the optimizer step), activation sizes at
        the cuts and the body's memory.
    """
    example = task.example_input(config)
    return measure_part_costs(
        task.model_fn(config), example, split.cuts, RunConfig.of(config).batch_size
    )


def measure_part_costs(
    model: Any, example_input: Any, cuts: Sequence[str], batch_size: int
) -> PartCosts:
    """Measure one batch of ``batch_size`` through the head, body and tail of ``model``
    cut at ``cuts`` on this machine (see :func:`part_costs`)."""
    from flsplit.model.profile import profile_model
    from flsplit.task import batch_like

    batch = batch_like(example_input, batch_size)
    profile = profile_model(model, batch, cuts=list(cuts), repeats=3, warmup=1)
    layers = profile["layers"]
    times = next(iter(profile["devices"].values()))
    fwd, bwd, upd = times["forward_ms"], times["backward_ms"], times["update_ms"]
    cut1_shapes, cut2_shapes = cut_shapes(model, batch, cuts)
    return PartCosts(
        head_fwd_ms=fwd[0],
        head_bwd_ms=bwd[0] + upd[0],
        body_fwd_ms=fwd[1],
        body_bwd_ms=bwd[1] + upd[1],
        tail_ms=fwd[2] + bwd[2] + upd[2],
        cut1_bytes=int(layers[0]["activation_kib"] * 1024),
        cut2_bytes=int(layers[1]["activation_kib"] * 1024),
        body_memory_mib=layers[1]["memory_kib"] / 1024,
        cut1_shapes=cut1_shapes,
        cut2_shapes=cut2_shapes,
    )


def cut_shapes(
    model: Any, batch: Any, cuts: Sequence[str]
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Shapes of the floating-point tensors crossing each of the two ``cuts`` of
    ``model`` for ``batch`` (one forward pass of a copy, without autograd)."""
    import torch

    from flsplit.model import crossing
    from flsplit.model.splitting import split_model

    split = split_model(model, list(cuts), batch)
    with torch.no_grad():
        cut1 = split.parts[0](batch)
        cut2 = crossing.call_part(split.parts[1], cut1)

    def floating(activation: Any) -> tuple[tuple[int, ...], ...]:
        return tuple(
            tuple(int(n) for n in t.shape)
            for t in crossing.as_tuple(activation)
            if t.is_floating_point()
        )

    return floating(cut1), floating(cut2)


def cut_pairs(model: Any, example_input: Any, candidates: str, default: Sequence[str]) -> list[str]:
    """The candidate cut pairs of the run config key ``cut-candidates``.

    Parameters
    ----------
    model : torch.nn.Module
        The full model.
    example_input : torch.Tensor
        One input batch, to check the cuts on real shapes.
    candidates : str
        ``';'``-separated pairs of module names or candidate indices
        (``"conv2,fc1;bn2,fc2"``), or ``"all"`` for every pair of candidate cuts.
    default : sequence of str
        The default cut pair (resolved names); ``"all"`` lists it first.

    Returns
    -------
    list of str
        Distinct pairs as resolved module names (``"conv2,fc1"``), in the given order.

    Raises
    ------
    ValueError
        Naming the item that is not a valid pair of cuts.
    """
    from flsplit.model.splitting import candidate_cuts, resolve_cuts
    from flsplit.task import parse_cuts

    if candidates.strip().lower() == "all":
        names = candidate_cuts(model, example_input)
        pairs = [f"{a},{b}" for i, a in enumerate(names) for b in names[i + 1 :]]
        first = ",".join(default)
        return [first] + [p for p in pairs if p != first] if first in pairs else pairs
    pairs: list[str] = []
    for item in candidates.split(";"):
        if not item.strip():
            continue
        try:
            names = resolve_cuts(model, parse_cuts(item), example_input)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cut-candidates item {item.strip()!r}: {exc}") from None
        if len(names) != 2:
            raise ValueError(
                f"cut-candidates item {item.strip()!r}: a cut pair needs exactly two cuts"
            )
        if ",".join(names) not in pairs:
            pairs.append(",".join(names))
    if not pairs:
        raise ValueError(f"cut-candidates {candidates!r} names no cut pair")
    return pairs


def cut_costs(task: SplitTask, config: Mapping[str, Any], split: Any) -> CutCosts:
    """Measure one batch through every segment the candidate cut pairs need.

    Parameters
    ----------
    task : SplitTask
        Model and example input.
    config : Mapping
        Run config (``cut-candidates``, ``batch-size``).
    split : SplitModel
        The model split at the default cuts.

    Returns
    -------
    CutCosts
        Per-segment costs; with ``"all"``, pairs whose body has no parameters are left out.

    Raises
    ------
    ValueError
        When a listed pair is invalid or its body has no parameters.
    """
    from flsplit.model.profile import profile_model
    from flsplit.model.splitting import candidate_cuts
    from flsplit.task import batch_like

    model = task.model_fn(config)
    example = task.example_input(config)
    settings = RunConfig.of(config)
    pairs = cut_pairs(model, example, settings.cut_candidates, split.cuts)
    used = {name for pair in pairs for name in pair.split(",")} | set(split.cuts)
    boundaries = [name for name in candidate_cuts(model, example) if name in used]
    batch = batch_like(example, settings.batch_size)
    profile = profile_model(model, batch, cuts=boundaries, repeats=5, warmup=2)
    costs = CutCosts.from_profile(profile, pairs, ",".join(split.cuts))
    # A body without parameters leaves the helper nothing to train or return.
    empty = [pair for pair in pairs if costs.body_weights_kib(pair) <= 0]
    if empty and settings.cut_candidates.lower() != "all":
        raise ValueError(
            f"cut-candidates item {empty[0]!r}: its body has no parameters for the helper "
            "to train; move a cut so that the body holds a layer with weights"
        )
    if empty:
        costs = CutCosts.from_profile(
            profile, [p for p in pairs if p not in empty], ",".join(split.cuts)
        )
    return costs
