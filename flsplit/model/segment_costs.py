"""The model's costs per segment between its candidate cuts, for planning helper chains.

A planned chain may cut a client's model at any candidate cut (:func:`candidate_cuts`),
so the server profiles one batch through every segment once
(:func:`flsplit.model.profile.profile_model`). A helper must train something, so a
segment without parameters (a ReLU, a pooling layer) is merged into the segment after
it: every body piece between two kept cuts then holds weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flsplit.model.costs import MIN_SEGMENT_MS
from flsplit.plan.cuts.profiles import LayerProfile


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
    """

    profile: LayerProfile
    boundaries: tuple[str, ...]
    batch_size: int

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
        """Forward + backward + update time per sample of each segment (ms)."""
        column = self.profile.devices["server"]
        total = (np.asarray(column["forward_ms"]) + np.asarray(column["backward_ms"])
                 + np.asarray(column["update_ms"]))
        return total / self.batch_size

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
    profile = profile_model(model, batch, cuts=cuts, repeats=5, warmup=2)
    return SegmentCosts.from_profile(profile, settings.batch_size)
