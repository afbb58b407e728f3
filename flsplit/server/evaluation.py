"""Server-side evaluation: the global model on the task's test data after every round."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from flsplit.protocol import test_metrics
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

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round += round_offset
        model = task.model_fn(config)
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        loss, acc, examples = evaluate_model(model, task.batches(test_data), task.loss_fn)
        log(INFO, "round %d: server test_loss %.4f test_acc %.4f", server_round, loss, acc)
        return test_metrics(examples, loss, acc)

    return evaluate
