"""SplitTask data handling: batches of tuples or dicts, every local epoch sees all data."""

import torch
from torch import nn

from flsplit.task import SplitTask, train_full


def _task():
    return SplitTask(
        model_fn=lambda cfg: nn.Linear(4, 3),
        load_data=lambda p, n, cfg: ([], []),
        example_input=lambda cfg: torch.zeros(1, 4),
    )


def test_batches_can_be_iterated_once_per_epoch():
    tuples = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    dicts = [{"img": x, "label": y} for x, y in tuples]
    for loader in (tuples, dicts):
        batches = _task().batches(loader)
        first, second = list(batches), list(batches)
        assert len(first) == len(second) == 3
        for (x1, y1), (x2, y2) in zip(first, second, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_local_epochs_each_train_on_every_batch():
    torch.manual_seed(0)
    loader = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(3)]
    seen = []

    def loss_fn(logits, labels):
        seen.append(int(labels.shape[0]))
        return nn.functional.cross_entropy(logits, labels)

    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, _, examples = train_full(model, _task().batches(loader), loss_fn, optimizer, epochs=2)
    assert len(seen) == 6 and examples == 12
