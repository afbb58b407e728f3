"""Server-side evaluation: the global model on the task's test data after every round.

The unsplit model runs on exact activations (``test_acc``). With a lossy activation codec
(run config ``compress-activations``, split mode) the split model also runs as the data
plane runs it, every floating-point tensor crossing a cut coded and decoded
(``test_acc_coded``): a model trained on top-k activations has never seen exact ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from flsplit.config import CodecSetting, RunConfig
from flsplit.model.outputs import correct_count, logits_of
from flsplit.model.parts import SplitModel
from flsplit.protocol import test_metrics
from flsplit.runtime import codecs
from flsplit.task import SplitTask, evaluate_model


def server_evaluation(
    task: SplitTask, config: Mapping[str, Any], round_offset: int = 0
) -> Callable[[int, ArrayRecord], MetricRecord | None] | None:
    """The strategy's ``evaluate_fn``: test loss and accuracy of the global model.

    Parameters
    ----------
    task : SplitTask
        Model, test data and loss.
    config : Mapping
        Run config.
    round_offset : int
        Rounds done before this run started (a resumed run), added to Flower's round.

    Returns
    -------
    callable or None
        ``evaluate(server_round, arrays) -> MetricRecord``; ``None`` when the task has
        no test data.
    """
    if task.load_test_data is None:
        return None
    test_data = task.load_test_data(config)
    settings = RunConfig.of(config)
    codec = settings.compress_activations if settings.mode == "split" else codecs.NONE

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round += round_offset
        model = task.model_fn(config)
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state, strict=True)
        loss, acc, examples = evaluate_model(model, task.batches(test_data), task.loss_fn)
        log(INFO, "round %d: server test_loss %.4f test_acc %.4f", server_round, loss, acc)
        if codec.lossless:
            return test_metrics(examples, loss, acc)
        split = task.split(config)
        for part in split.parts:
            part.load_state_dict({k: state[k] for k in part.state_dict()}, strict=True)
        coded = coded_accuracy(split, task.batches(test_data), codec, seed=server_round)
        log(INFO, "round %d: server test_acc_coded %.4f (%s at the cuts)", server_round,
            coded, codec)
        return test_metrics(examples, loss, acc, coded)

    return evaluate


def coded_accuracy(
    split: SplitModel,
    batches: Iterable[tuple[Any, torch.Tensor]],
    codec: CodecSetting,
    seed: int = 0,
) -> float:
    """Accuracy of ``split``'s parts run in sequence, every floating-point tensor that
    crosses a cut coded with ``codec`` and decoded, as the data plane delivers it (error
    feedback left out: each batch is coded on its own).

    Parameters
    ----------
    split : SplitModel
        The model's parts, loaded.
    batches : iterable
        ``(inputs, labels)`` test batches.
    codec : CodecSetting
        The activations' codec.
    seed : int
        Seeds the draws of ``randtopk`` and ``utopk``.
    """
    generator = torch.Generator().manual_seed(seed)

    def cross(x: Any) -> Any:
        if isinstance(x, tuple):
            return tuple(cross(t) for t in x)
        if codec.lossless or not isinstance(x, torch.Tensor) or not codecs.codable(x):
            return x
        return codecs.encode(x, codec, generator)[1]

    split.eval()
    correct, total = 0.0, 0
    last = len(split.parts) - 1
    with torch.no_grad():
        for inputs, labels in batches:
            x = inputs
            for i, part in enumerate(split.parts):
                x = part(*x) if i and isinstance(x, tuple) else part(x)
                if i < last:
                    x = cross(x)
            correct += correct_count(logits_of(x), labels)
            total += int(labels.shape[0])
    return correct / max(total, 1)
