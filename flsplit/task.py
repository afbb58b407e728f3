"""What a user gives flsplit: model, data, loss and optimizer, plus the run settings."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flsplit.model.split import SplitModel, split_model

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFn = Callable[[Iterable[nn.Parameter], Mapping[str, Any]], torch.optim.Optimizer]

#: Run-config keys flsplit reads and their defaults (a ``[tool.flwr.app.config]`` may
#: override any of them).
DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-server-rounds": 3,
    "num-helpers": 1,
    "mode": "split",  # "split" or "fedavg" (plain FedAvg of the same model, for comparison)
    "cuts": "",  # comma-separated module names or indices; empty = default U-shape
    "lr": 0.05,
    "momentum": 0.0,
    "local-epochs": 1,
    "batch-size": 32,
    "round-timeout": 600.0,
    "call-deadline": 120.0,
    "client-idle-timeout": 120.0,  # a helper drops a client silent this long (0 = never)
    "helper-memory": "per-client",  # or "shared": one body for all of a helper's clients
    "chain-length": 1,  # helpers per client: the body is split again over a chain of them
    "chain-cuts": "auto",  # inner cuts of a chain (comma-separated), or "auto": balanced
    "micro-batches": 1,  # micro-batches per batch, pipelined through the helper(s)
    "min-completed-clients": 1,  # fewer complete updates: the round is not aggregated
    "checkpoint-dir": "",  # write a checkpoint after every round here; resume from it
    "simulation-concurrency": 0,  # flsplit simulate: nodes at once (0 = all, at most 24)
    "fraction-evaluate": 1.0,
    "planner": "round-robin",  # or a planner method: auto, greedy, random-fcfs, ...
    "planner-time-limit": 2.0,
    # cut pairs the planner chooses from every round, ';'-separated ("conv2,fc1;bn2,fc2"),
    # or "all"; empty = every client keeps `cuts`
    "cut-candidates": "",
    "cut-method": "auto",  # joint cut optimizer: auto, integrated, alternating, exact
    # Global sampling (docs/sampling.md): "local" = every client its own local batches;
    # "uniform" / "dirichlet" = synchronous steps whose composition the server samples
    "sampler": "local",
    "global-batch-size": 0,  # samples per synchronous step (0 = batch-size)
    "sampler-concentration": 100.0,  # dirichlet: how close steps stay to the mean share
    "sampler-straggler-weight": 0.0,  # dirichlet: 1 = shares proportional to data x speed
    "sampler-seed": 0,
    "sync-steps": 0,  # synchronous steps per round (0 = local-epochs epochs of the sampler)
    "client-parts": "shared",  # synchronous steps: "shared" (exact) or "local" head/tail
    "seed": 0,
}


def sgd(params: Iterable[nn.Parameter], config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Plain SGD with ``lr`` and ``momentum`` from the run config."""
    return torch.optim.SGD(
        params, lr=float(config.get("lr", 0.05)), momentum=float(config.get("momentum", 0.0))
    )


@dataclass
class SplitTask:
    """A learning task described once and used by server, clients and helpers.

    Parameters
    ----------
    model_fn : callable
        ``model_fn(run_config)`` returns a fresh ``nn.Module``; only the server's initial
        weights matter (they are broadcast).
    load_data : callable
        ``load_data(partition_id, num_partitions, run_config) -> (train, val)`` with two
        iterables of ``(inputs, labels)`` batches for one client.
    example_input : callable
        ``example_input(run_config)`` returns one input batch, used to trace the model.
    loss_fn : callable
        ``loss_fn(logits, labels)``, mean over the batch; runs on the client.
    optimizer_fn : callable
        ``optimizer_fn(params, run_config)``; used for head and tail on the client and for
        the body on the helper.
    load_test_data : callable, optional
        ``load_test_data(run_config) -> iterable of batches`` for server-side evaluation.
    batch_keys : tuple of str
        Keys of inputs and labels when batches are dicts (Flower Datasets' loaders yield
        ``{"img": ..., "label": ...}``); tuple batches are ``(inputs, labels)``.
    run_config : dict
        Defaults of this task, between flsplit's and the run config's.
    """

    model_fn: Callable[[Mapping[str, Any]], nn.Module]
    load_data: Callable[[int, int, Mapping[str, Any]], tuple[Iterable, Iterable]]
    example_input: Callable[[Mapping[str, Any]], torch.Tensor]
    loss_fn: LossFn = nn.functional.cross_entropy
    optimizer_fn: OptimizerFn = sgd
    load_test_data: Callable[[Mapping[str, Any]], Iterable] | None = None
    batch_keys: tuple[str, str] = ("img", "label")
    run_config: dict[str, Any] = field(default_factory=dict)

    def batches(self, loader: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` of ``loader``, whether it yields tuples or dicts.

        The result can be iterated again (one pass over ``loader`` each time), so several
        local epochs each see all the data.
        """
        return _Batches(loader, self.batch_keys)

    def config(self, run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Fuse flsplit's defaults, the task's own settings and a run config."""
        return {**DEFAULT_RUN_CONFIG, **self.run_config, **dict(run_config or {})}

    def split(self, config: Mapping[str, Any]) -> SplitModel:
        """Split a fresh model at the run config's ``cuts`` (traced once per process)."""
        model = self.model_fn(config)
        example = self.example_input(config)
        key = (repr(model), tuple(example.shape), str(example.dtype), parse_cuts(config["cuts"]))
        cached = _SPLIT_CACHE.get(key)
        if cached is None:
            cached = _SPLIT_CACHE[key] = split_model(model, key[-1], example)
        return copy.deepcopy(cached)


@dataclass(frozen=True)
class _Batches:
    """A re-iterable view of a data loader as ``(inputs, labels)`` pairs."""

    loader: Iterable
    keys: tuple[str, str]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            if isinstance(batch, Mapping):
                yield batch[self.keys[0]], batch[self.keys[1]]
            else:
                inputs, labels = batch
                yield inputs, labels


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


_SPLIT_CACHE: dict[tuple, SplitModel] = {}


def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn
) -> tuple[float, float, int]:
    """Return mean loss, accuracy and example count of ``model`` on ``batches``."""
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for inputs, labels in batches:
            logits = model(inputs)
            n = int(labels.shape[0])
            loss_sum += float(loss_fn(logits, labels)) * n
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += n
    return loss_sum / max(total, 1), correct / max(total, 1), total


def train_full(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int = 1,
) -> tuple[float, float, int]:
    """Train the unsplit model locally (plain FedAvg); return loss, accuracy, examples."""
    model.train()
    loss_sum, correct, total = 0.0, 0, 0
    for _ in range(epochs):
        for inputs, labels in batches:
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            n = int(labels.shape[0])
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(dim=1) == labels).sum())
            total += n
    return loss_sum / max(total, 1), correct / max(total, 1), total
