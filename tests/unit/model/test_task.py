"""SplitTask data handling: batches of tuples or dicts (one input key or several, which make
the inputs a dict), every local epoch sees all data; models taking named inputs."""

import pytest
import torch
from torch import nn

from flsplit.task import SplitTask, _signature, batch_like, evaluate_model, train_full


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


def _keyword_model() -> nn.Module:
    """A model taking named inputs, as a Hugging Face model does: ``model(**inputs)``
    returns an object with ``.logits`` (N, T, V)."""

    class Output:
        def __init__(self, logits):
            self.logits = logits

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 5)

        def forward(self, input_ids, attention_mask):
            return Output(self.embed(input_ids) * attention_mask.unsqueeze(-1))

    return Keyword()


def _lm_loss(logits, labels):
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def _dict_batches():
    ids = torch.tensor([[1, 2, 3], [4, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = torch.tensor([[2, 3, -100], [1, -100, -100]])
    return [{"input_ids": ids, "attention_mask": mask, "labels": labels, "text": ["a", "b"]}]


def test_several_input_keys_make_the_inputs_a_dict_of_them():
    task = SplitTask(
        model_fn=lambda cfg: _keyword_model(),
        load_data=lambda p, n, cfg: ([], []),
        example_input=lambda cfg: {"input_ids": torch.zeros(1, 3, dtype=torch.long)},
        batch_keys=(("input_ids", "attention_mask"), "labels"),
    )
    loader = _dict_batches()
    (inputs, labels), = list(task.batches(loader))
    assert set(inputs) == {"input_ids", "attention_mask"}  # not "labels", not "text"
    assert torch.equal(inputs["input_ids"], loader[0]["input_ids"])
    assert torch.equal(inputs["attention_mask"], loader[0]["attention_mask"])
    assert torch.equal(labels, loader[0]["labels"])
    assert len(list(task.batches(loader))) == 1  # re-iterable, as for one key


def test_a_list_of_input_keys_is_kept_as_a_tuple():
    task = SplitTask(
        model_fn=lambda cfg: _keyword_model(), load_data=lambda p, n, cfg: ([], []),
        example_input=lambda cfg: torch.zeros(1), batch_keys=[["input_ids"], "labels"],
    )
    assert task.batch_keys == (("input_ids",), "labels")
    (inputs, _), = list(task.batches(_dict_batches()))
    assert list(inputs) == ["input_ids"]


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ("img", "pair"),
        (("a", "b", "c"), "pair"),
        (((), "labels"), "tuple of keys"),
        ((("input_ids", 3), "labels"), "tuple of keys"),
        (("input_ids", ("labels",)), "labels are one key"),
        ((("input_ids", "labels"), "labels"), "also an input"),
    ],
)
def test_batch_keys_that_cannot_name_inputs_and_labels_are_refused(keys, says):
    with pytest.raises(ValueError, match=says):
        SplitTask(
            model_fn=lambda cfg: nn.Linear(4, 3), load_data=lambda p, n, cfg: ([], []),
            example_input=lambda cfg: torch.zeros(1, 4), batch_keys=keys,
        )


def test_a_missing_key_names_the_keys_the_batch_has():
    task = SplitTask(
        model_fn=lambda cfg: _keyword_model(), load_data=lambda p, n, cfg: ([], []),
        example_input=lambda cfg: torch.zeros(1),
        batch_keys=(("input_ids", "token_type_ids"), "labels"),
    )
    with pytest.raises(KeyError, match=r"\['token_type_ids'\]"):
        list(task.batches(_dict_batches()))


def test_named_inputs_train_and_evaluate_the_full_model():
    torch.manual_seed(0)
    task = SplitTask(
        model_fn=lambda cfg: _keyword_model(), load_data=lambda p, n, cfg: ([], []),
        example_input=lambda cfg: torch.zeros(1), loss_fn=_lm_loss,
        batch_keys=(("input_ids", "attention_mask"), "labels"),
    )
    model = _keyword_model()
    batches = task.batches(_dict_batches())
    before, _, examples = evaluate_model(model, batches, _lm_loss)
    assert examples == 2  # sequences, as labels.shape[0] counts them
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_full(model, batches, _lm_loss, optimizer, epochs=20)
    after, acc, _ = evaluate_model(model, batches, _lm_loss)
    assert after < before
    assert acc == 1.0  # the labelled tokens 2, 3 and 1 (the -100s left out) are learnt
    with torch.no_grad():
        model.embed.weight[2] = 0.0  # input 2 predicts 0, not its label 3, now
        model.embed.weight[2, 0] = 1.0
    _, acc, _ = evaluate_model(model, batches, _lm_loss)
    assert acc == pytest.approx((1 / 2 + 1) / 2)  # per sequence: half of the first right


def test_classifier_accuracy_is_per_example_as_before():
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # always class 1
    batches = [(torch.randn(4, 4), torch.tensor([1, 1, 0, 2]))]
    _, acc, examples = evaluate_model(model, batches, nn.functional.cross_entropy)
    assert (acc, examples) == (0.5, 4)


def test_the_split_cache_tells_example_inputs_apart_by_names_shapes_and_dtypes():
    one = {"input_ids": torch.zeros(1, 4, dtype=torch.long)}
    assert _signature(one) == _signature({"input_ids": torch.ones(1, 4, dtype=torch.long)})
    assert _signature(one) != _signature({"input_ids": torch.zeros(1, 5, dtype=torch.long)})
    assert _signature(one) != _signature({"input_ids": torch.zeros(1, 4)})
    assert _signature(one) != _signature(
        {**one, "attention_mask": torch.zeros(1, 4, dtype=torch.long)}
    )
    assert _signature(torch.zeros(1, 4)) != _signature(torch.zeros(1, 4, dtype=torch.long))


def test_a_batch_like_the_example_keeps_token_ids_valid_and_draws_floats():
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    batch = batch_like({"input_ids": ids, "attention_mask": torch.ones(2, 3, dtype=torch.long)}, 5)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0], [5, 6, 7], [8, 9, 0], [5, 6, 7]]
    assert batch["attention_mask"].shape == (5, 3) and batch["attention_mask"].dtype == torch.long
    images = batch_like(torch.zeros(1, 3, 4, 4), 6)
    assert images.shape == (6, 3, 4, 4) and images.dtype == torch.float32 and images.std() > 0
