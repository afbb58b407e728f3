"""What a user gives flsplit: model, data, loss and optimizer, plus the run settings."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flsplit.config import RunConfig
from flsplit.model.outputs import correct_count, logits_of
from flsplit.model.splitting import SplitModel, parse_cuts, split_model

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFn = Callable[[Iterable[nn.Parameter], Mapping[str, Any]], torch.optim.Optimizer]
#: ``train_fn(model, train_loader, config, device)``: the app's own training function.
TrainFn = Callable[[nn.Module, Any, dict[str, Any], torch.device], Any]
#: ``hook(model, context)``: the app's own code before or after a client trains.
StateHook = Callable[[nn.Module, Any], None]

def sgd(params: Iterable[nn.Parameter], config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Plain SGD with ``lr`` and ``momentum`` from the run config."""
    settings = RunConfig.of(config)
    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)


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
        ``example_input(run_config)`` returns one input batch, used to trace the model: a
        tensor, or a mapping of tensors passed as ``model(**inputs)`` (transformers).
    loss_fn : callable
        ``loss_fn(logits, labels)``, mean over the batch; runs on the client.
    optimizer_fn : callable
        ``optimizer_fn(params, run_config)``; used for head and tail on the client and for
        the body on the helper by flsplit's own training loop (not with ``train_fn``).
    train_fn : callable, optional
        The app's own training function, ``train_fn(model, train_loader, config,
        device)``: ``model`` is the split model as the client holds it
        (:class:`~flsplit.model.client_view.ClientModel`: head and tail here, the body on
        the helper, driven by the function's own ``loss.backward()`` and
        ``optimizer.step()``), ``train_loader`` what ``load_data`` returned, ``config``
        the run config with the server's train config over it (``lr``, FedProx's
        ``proximal-mu``, ...), ``device`` the node's compute device. It returns the mean
        train loss (a number, or a dict with ``train_loss``), or nothing. Without it
        flsplit's own loop trains with ``loss_fn`` and ``optimizer_fn``
        (:mod:`flsplit.runtime.remote_body` says what a training function can do).
    restore_state, save_state : callable, optional
        ``hook(model, context)`` before and after ``train_fn``: the app's own code that
        keeps state across rounds in ``context.state`` (a personal layer restored before
        training and saved after), as its plain ``train`` handler does.
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
    example_input: Callable[[Mapping[str, Any]], torch.Tensor | Mapping[str, torch.Tensor]]
    loss_fn: LossFn = nn.functional.cross_entropy
    optimizer_fn: OptimizerFn = sgd
    load_test_data: Callable[[Mapping[str, Any]], Iterable] | None = None
    batch_keys: tuple[str, str] = ("img", "label")
    run_config: dict[str, Any] = field(default_factory=dict)
    train_fn: TrainFn | None = None
    restore_state: StateHook | None = None
    save_state: StateHook | None = None

    def batches(self, loader: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` of ``loader``, whether it yields tuples or dicts.

        The result can be iterated again (one pass over ``loader`` each time), so several
        local epochs each see all the data.
        """
        return _Batches(loader, self.batch_keys)

    def settings(self, *run_configs: Mapping[str, Any] | None) -> RunConfig:
        """flsplit's defaults, the task's own settings and ``run_configs`` (later ones
        win), read and checked once (:class:`flsplit.config.RunConfig`)."""
        return RunConfig.parse(self.run_config, *run_configs)

    def config(self, run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Fuse flsplit's defaults, the task's own settings and a run config."""
        return self.settings(run_config).as_dict()

    def split(self, config: Mapping[str, Any]) -> SplitModel:
        """Split a fresh model at the run config's ``cuts`` (traced once per process)."""
        model = self.model_fn(config)
        example = self.example_input(config)
        key = (repr(model), _signature(example), parse_cuts(config["cuts"]))
        cached = _SPLIT_CACHE.get(key)
        if cached is None:
            cached = _SPLIT_CACHE[key] = split_model(model, key[-1], example)
        return copy.deepcopy(cached)


def _signature(example: Any) -> tuple:
    """Shapes and dtypes of an example input (a tensor or a mapping of tensors)."""
    if isinstance(example, Mapping):
        return tuple((k, *_signature(v)) for k, v in sorted(example.items()))
    if isinstance(example, torch.Tensor):
        return (tuple(example.shape), str(example.dtype))
    return (repr(example),)


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


_SPLIT_CACHE: dict[tuple, SplitModel] = {}


def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn
) -> tuple[float, float, int]:
    """Return mean loss, accuracy and example count of ``model`` on ``batches``.

    The loss gets the logits of the model's output (:func:`~flsplit.model.outputs.logits_of`);
    the accuracy counts per example (:func:`~flsplit.model.outputs.correct_count`).
    """
    model.eval()
    loss_sum, correct, total = 0.0, 0.0, 0
    with torch.no_grad():
        for inputs, labels in batches:
            logits = logits_of(_call(model, inputs))
            n = int(labels.shape[0])
            loss_sum += float(loss_fn(logits, labels)) * n
            correct += correct_count(logits, labels)
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
    loss_sum, correct, total = 0.0, 0.0, 0
    for _ in range(epochs):
        for inputs, labels in batches:
            optimizer.zero_grad(set_to_none=True)
            logits = logits_of(_call(model, inputs))
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            n = int(labels.shape[0])
            loss_sum += float(loss.detach()) * n
            correct += correct_count(logits, labels)
            total += n
    return loss_sum / max(total, 1), correct / max(total, 1), total


def _call(model: nn.Module, inputs: Any) -> Any:
    """The unsplit model on a batch's inputs: ``model(**inputs)`` for named inputs (Hugging
    Face style, as the split model's head gets them), else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
