"""The model's costs per segment between its candidate cuts, for planning helper chains.

A planned chain may cut a client's model at any candidate cut (:func:`candidate_cuts`),
so the server profiles one batch through every segment once
(:func:`flsplit.model.profile.profile_model`). A helper must train something, so a
segment without parameters (a ReLU, a pooling layer) is merged into the segment after
it: every body piece between two kept cuts then holds weights.

A segment's forward and backward cost a fixed time per call besides their time per
sample (Python, autograd and operator dispatch; on a small model at a few samples, most
of it): with a second profile at a small batch (:meth:`SegmentCosts.with_calls`) each
segment's time is affine, ``call + b x per-sample``, so a plan that cuts batches into
micro-batches is charged the calls it makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flsplit.model.costs import MIN_SEGMENT_MS
from flsplit.plan.cuts.profiles import LayerProfile

#: Samples of the second, small profile that separates a segment's fixed time per call
#: from its time per sample (a micro-batch of a few samples is what pays the calls).
SMALL_BATCH = 2


@dataclass(frozen=True)
class SegmentCosts:
    """Per-segment costs of one batch on the server's machine.

    Attributes
    ----------
    profile : LayerProfile
        Segment sizes (activation after each segment, weights, training memory) and the
        server's times (its only device column, ``"server"``).
    boundaries : tuple of str
        The cut after each segment but the last: planner cut position ``q``
        (``1 .. L - 1``) is the cut named ``boundaries[q - 1]``.
    batch_size : int
        Samples of the profiled batch.
    calls : tuple of float
        Fixed time of one call (forward and backward) of each segment (ms), from a
        second profile at a small batch (:meth:`with_calls`); empty: none measured (0).
    """

    profile: LayerProfile
    boundaries: tuple[str, ...]
    batch_size: int
    calls: tuple[float, ...] = ()

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], batch_size: int) -> SegmentCosts:
        """Costs from a profile of :func:`~flsplit.model.profile.profile_model` (layer
        names ``[first child, *boundaries]``, one device column), segments without
        weights merged into the next one."""
        layers = list(profile["layers"])
        column = dict(next(iter(profile["devices"].values())))
        times = {k: [float(v) for v in column[k]] for k in ("forward_ms", "backward_ms",
                                                             "update_ms")}
        groups: list[list[int]] = []
        current: list[int] = []
        weights = 0.0
        for i, layer in enumerate(layers):
            current.append(i)
            weights += float(layer.get("weights_kib", 0.0))
            if weights > 0 and i < len(layers) - 1:
                groups.append(current)
                current, weights = [], 0.0
        if current:
            groups.append(current)

        def total(values: Sequence[float], group: list[int]) -> float:
            return float(sum(values[i] for i in group))

        def memory(i: int) -> float:
            layer = layers[i]
            if isinstance(layer.get("memory_kib"), int | float):
                return float(layer["memory_kib"])
            return 3 * float(layer["weights_kib"]) + float(layer["activation_kib"])

        device = {k: [max(total(v, g), MIN_SEGMENT_MS) for g in groups]
                  for k, v in times.items()}
        parsed = LayerProfile(
            model=str(profile.get("model", "")),
            activation_kib=np.array([float(layers[g[-1]]["activation_kib"]) for g in groups]),
            weights_kib=np.array([sum(float(layers[i]["weights_kib"]) for i in g)
                                  for g in groups]),
            memory_kib=np.array([sum(memory(i) for i in g) for g in groups]),
            devices={"server": device},
        )
        # layer i's name is the cut before it; a group's cut is the next group's first name
        names = tuple(str(layers[g[0]]["name"]) for g in groups[1:])
        return cls(parsed, names, int(batch_size))

    @property
    def num_segments(self) -> int:
        """Number of segments ``L``."""
        return self.profile.num_layers

    def sample_ms(self) -> np.ndarray:
        """Forward + backward + update time per sample of each segment (ms), less the
        fixed time per call (:meth:`call_ms`): a segment's batch of ``b`` takes
        ``call_ms + b sample_ms``; the update, once per batch, counted per sample."""
        column = self.profile.devices["server"]
        total = (np.asarray(column["forward_ms"]) + np.asarray(column["backward_ms"])
                 + np.asarray(column["update_ms"]))
        return (total - self.call_ms()) / self.batch_size

    def call_ms(self) -> np.ndarray:
        """Fixed time of one forward and backward call of each segment (ms; 0 where not
        measured)."""
        if not self.calls:
            return np.zeros(self.num_segments)
        return np.asarray(self.calls, dtype=float)

    def with_calls(self, small: SegmentCosts) -> SegmentCosts:
        """These costs with each segment's fixed time per call, from ``small``: the same
        segments profiled at a smaller batch. Forward + backward time is taken as affine
        in the samples through the two batch sizes; the fixed part is kept within 0 and
        the whole batch's time (profiles are noisy)."""
        if small.num_segments != self.num_segments or small.batch_size >= self.batch_size:
            raise ValueError("with_calls needs the same segments at a smaller batch")

        def fwd_bwd(costs: SegmentCosts) -> np.ndarray:
            column = costs.profile.devices["server"]
            return np.asarray(column["forward_ms"]) + np.asarray(column["backward_ms"])

        big, little = fwd_bwd(self), fwd_bwd(small)
        rate = (big - little) / (self.batch_size - small.batch_size)
        call = np.clip(little - rate * small.batch_size, 0.0, big)
        return replace(self, calls=tuple(float(x) for x in call))

    def forward_ms(self) -> np.ndarray:
        """Forward time per sample of each segment (ms)."""
        return np.asarray(self.profile.devices["server"]["forward_ms"]) / self.batch_size

    def cut_names(self, cuts: Sequence[int]) -> str:
        """The module names of planner cut positions (``"features.3,features.10,fc1"``)."""
        return ",".join(self.boundaries[int(q) - 1] for q in cuts)


def segment_costs(task: Any, config: Mapping[str, Any]) -> SegmentCosts:
    """Profile one batch through every segment between the model's candidate cuts.

    Parameters
    ----------
    task : SplitTask
        Model and example input.
    config : Mapping
        Run config (``batch-size``).
    """
    from flsplit.config import RunConfig
    from flsplit.model.profile import profile_model
    from flsplit.model.splitting import candidate_cuts
    from flsplit.task import batch_like

    settings = RunConfig.of(config)
    model = task.model_fn(settings.as_dict())
    example = task.example_input(settings.as_dict())
    batch = batch_like(example, settings.batch_size)
    cuts = candidate_cuts(model, example)
    # own time: the server profiles while the nodes start (on one machine, a simulation
    # busy with them), and waiting for a core is not the segments' cost
    profile = profile_model(model, batch, cuts=cuts, repeats=5, warmup=2, own_time=True)
    costs = SegmentCosts.from_profile(profile, settings.batch_size)
    small_batch = min(SMALL_BATCH, settings.batch_size // 2)
    if small_batch < 1:
        return costs
    small = profile_model(model, batch_like(example, small_batch), cuts=cuts, repeats=5,
                          warmup=2, own_time=True)
    return costs.with_calls(SegmentCosts.from_profile(small, small_batch))
