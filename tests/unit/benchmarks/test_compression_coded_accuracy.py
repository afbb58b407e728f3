"""benchmarks.compression: the accuracy of a checkpointed quickstart model with the
activations' codec at its cuts."""

import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.compression import coded_accuracy
from flsplit.task import evaluate_model

APP = Path(__file__).resolve().parents[3] / "examples" / "quickstart"


def _checkpoint(directory: Path, model: torch.nn.Module) -> Path:
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(directory / "round-3.npz", **arrays)
    (directory / "checkpoint.json").write_text(json.dumps({"arrays": "round-3.npz"}))
    return directory


def test_without_a_codec_it_is_the_server_evaluation_and_topk_at_the_cuts_changes_it(
    tmp_path,
):
    import sys

    sys.path.insert(0, str(APP))
    try:
        from quickstart.task import TASK
    finally:
        sys.path.pop(0)
    config = TASK.config({"seed": 1, "cuts": "conv2,fc2"})
    model = TASK.model_fn(config)
    # a model that is not at its initialization: a few steps on the test data do
    batches = list(TASK.batches(TASK.load_test_data(config)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for inputs, labels in batches[:1] * 20:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    checkpoint = _checkpoint(tmp_path, model)
    _, server, _ = evaluate_model(model, batches, TASK.loss_fn)
    assert coded_accuracy(APP, checkpoint, "none", 1) == server
    assert coded_accuracy(APP, checkpoint, "topk:0.01", 1) != server
