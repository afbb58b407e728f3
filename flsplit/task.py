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

#: A batch's inputs: one tensor, or named tensors the model takes as keyword arguments
#: (``model(**inputs)``, as Hugging Face models take ``input_ids`` and ``attention_mask``).
Inputs = torch.Tensor | Mapping[str, torch.Tensor]
#: ``(inputs, labels)`` keys of dict batches: one input key, or several (a tuple) that make
#: the inputs a dict of those keys.
BatchKeys = tuple[str | tuple[str, ...], str]
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
        iterables of batches for one client: ``(inputs, labels)`` tuples or dicts read
        with ``batch_keys``.
    example_input : callable
        ``example_input(run_config)`` returns one input batch, used to trace the model: a
        tensor, or a mapping of tensors passed as ``model(**inputs)`` (transformers).
    loss_fn : callable
        ``loss_fn(logits, labels)``, mean over the batch; runs on the client. ``logits``
        is the model's output, or its ``.logits`` when it returns a ``transformers``
        ``ModelOutput``.
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
    batch_keys : tuple
        ``(inputs, labels)`` keys when batches are dicts (Flower Datasets' loaders yield
        ``{"img": ..., "label": ...}``); tuple batches are ``(inputs, labels)``. The inputs
        key may be a tuple of keys: ``(("input_ids", "attention_mask"), "labels")`` makes
        each batch's inputs the dict of those two, which the model takes as keyword
        arguments; the labels key must not be one of them (labels stay with the loss).
    run_config : dict
        Defaults of this task, between flsplit's and the run config's.
    """

    model_fn: Callable[[Mapping[str, Any]], nn.Module]
    load_data: Callable[[int, int, Mapping[str, Any]], tuple[Iterable, Iterable]]
    example_input: Callable[[Mapping[str, Any]], torch.Tensor | Mapping[str, torch.Tensor]]
    loss_fn: LossFn = nn.functional.cross_entropy
    optimizer_fn: OptimizerFn = sgd
    load_test_data: Callable[[Mapping[str, Any]], Iterable] | None = None
    batch_keys: BatchKeys = ("img", "label")
    run_config: dict[str, Any] = field(default_factory=dict)
    train_fn: TrainFn | None = None
    restore_state: StateHook | None = None
    save_state: StateHook | None = None

    def __post_init__(self) -> None:
        self.batch_keys = _checked_keys(self.batch_keys)

    def batches(self, loader: Iterable) -> Iterable[tuple[Inputs, torch.Tensor]]:
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
    keys: BatchKeys

    def __iter__(self) -> Iterator[tuple[Inputs, torch.Tensor]]:
        inputs_key, labels_key = self.keys
        for batch in self.loader:
            if isinstance(batch, Mapping):
                yield _pick(batch, inputs_key), _pick(batch, labels_key)
            else:
                inputs, labels = batch
                yield inputs, labels


def _pick(batch: Mapping[str, Any], key: str | tuple[str, ...]) -> Any:
    """``batch[key]``, or the dict of ``batch``'s values under the keys ``key`` names."""
    wanted = (key,) if isinstance(key, str) else key
    missing = [k for k in wanted if k not in batch]
    if missing:
        raise KeyError(
            f"a batch has keys {sorted(batch)} but batch_keys names {missing}: set "
            "SplitTask(batch_keys=(inputs, labels)) to the keys its loader yields"
        )
    return batch[key] if isinstance(key, str) else {k: batch[k] for k in key}


def _checked_keys(keys: Any) -> BatchKeys:
    """``keys`` as ``(inputs key or keys, labels key)``, or ``ValueError`` saying why not."""
    example = (
        'batch_keys=("img", "label") or batch_keys=(("input_ids", "attention_mask"), "labels")'
    )
    if isinstance(keys, str) or not isinstance(keys, tuple | list) or len(keys) != 2:
        raise ValueError(f"batch_keys={keys!r} is not an (inputs, labels) pair; e.g. {example}")
    inputs, labels = keys
    if not isinstance(inputs, str):
        inputs = tuple(inputs) if isinstance(inputs, tuple | list) else inputs
        if (not isinstance(inputs, tuple) or not inputs
                or not all(isinstance(k, str) for k in inputs)):
            raise ValueError(
                f"batch_keys={keys!r}: the inputs are one key or a tuple of keys; e.g. {example}"
            )
    if not isinstance(labels, str):
        raise ValueError(f"batch_keys={keys!r}: the labels are one key; e.g. {example}")
    if labels in ((inputs,) if isinstance(inputs, str) else inputs):
        raise ValueError(
            f"batch_keys={keys!r}: the labels key {labels!r} is also an input; the labels "
            "stay with the loss on the client, so name them once, as the labels key"
        )
    return inputs, labels


def batch_like(example: Inputs, batch_size: int) -> Inputs:
    """An input batch of ``batch_size`` examples shaped like ``example``, to measure costs.

    Floating-point tensors are drawn from a normal distribution; other tensors (token
    ids, attention masks) repeat ``example``'s rows, so their values stay valid. A
    mapping of named inputs gets the same rows in every value.
    """

    def like(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return torch.randn(batch_size, *tensor.shape[1:], dtype=tensor.dtype)
        rows = torch.arange(batch_size) % max(int(tensor.shape[0]), 1)
        return tensor[rows].clone()

    if isinstance(example, Mapping):
        return {name: like(tensor) for name, tensor in example.items()}
    return like(example)


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
