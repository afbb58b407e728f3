"""Server-side evaluation with a lossy activation codec: the unsplit model on exact
activations (``test_acc``) and the split model with the codec at its cuts
(``test_acc_coded``), as the data plane runs it."""

import torch
from flwr.app import ArrayRecord

from flsplit.config import parse_codec
from flsplit.model.zoo import SmallCNN
from flsplit.protocol import NUM_EXAMPLES, TEST_ACC, TEST_ACC_CODED, TEST_LOSS
from flsplit.runtime import codecs
from flsplit.server.evaluation import server_evaluation
from flsplit.task import SplitTask


def _model(config):
    torch.manual_seed(3)
    return SmallCNN(1, 8)


torch.manual_seed(0)
INPUTS = torch.randn(64, 1, 8, 8)
with torch.no_grad():
    LABELS = _model({}).eval()(INPUTS).argmax(1)  # the unsplit model gets every one right
TEST = [(INPUTS[:32], LABELS[:32]), (INPUTS[32:], LABELS[32:])]
TASK = SplitTask(
    model_fn=_model,
    load_data=lambda p, n, cfg: ([], []),
    example_input=lambda cfg: torch.zeros(2, 1, 8, 8),
    load_test_data=lambda cfg: TEST,
)


def _evaluate(**overrides):
    config = TASK.config({"cuts": "conv2,fc2", **overrides})
    evaluate = server_evaluation(TASK, config)
    return dict(evaluate(1, ArrayRecord(_model(config).state_dict())))


def _topk_at_the_cuts(codec):
    """The accuracy of SmallCNN cut at conv2 and fc2 with ``codec`` at both cuts."""
    model = _model({}).eval()
    correct = 0
    with torch.no_grad():
        for x, y in TEST:
            h = codecs.encode(model.relu1(model.conv1(x)), codec)[1]
            h = model.pool(model.relu2(model.bn2(model.conv2(h))))
            z = codecs.encode(model.relu3(model.fc1(model.flatten(h))), codec)[1]
            correct += int((model.fc2(z).argmax(1) == y).sum())
    return correct / 64


def test_without_a_codec_the_metrics_are_what_they_were():
    metrics = _evaluate()
    assert set(metrics) == {NUM_EXAMPLES, TEST_LOSS, TEST_ACC}
    assert metrics[TEST_ACC] == 1.0


def test_topk_activations_are_also_evaluated_with_topk_at_the_cuts():
    metrics = _evaluate(**{"compress-activations": "topk:0.05+ef"})
    assert metrics[TEST_ACC] == 1.0
    expected = _topk_at_the_cuts(parse_codec("topk:0.05"))
    assert expected < 1.0  # top-k at the cuts changes the answers
    assert metrics[TEST_ACC_CODED] == expected


def test_fedavg_has_no_cuts_to_code_and_gradient_codecs_touch_no_activation():
    assert TEST_ACC_CODED not in _evaluate(**{"compress-activations": "int8", "mode": "fedavg"})
    assert TEST_ACC_CODED not in _evaluate(**{"compress-gradients": "topk:0.1"})
    assert _evaluate(**{"compress-activations": "fp16"})[TEST_ACC_CODED] == 1.0
