"""Split training over the real gRPC data plane."""

import copy
import itertools

import pytest
import torch
from torch import nn

from flsplit.models import SmallCNN
from flsplit.runtime.dataplane import DataPlaneError, HelperClient, HelperServer
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker
from flsplit.split import split_model


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _serve(body, tokens, **kwargs):
    worker = HelperWorker.replicated(body, list(tokens), _sgd)
    return HelperServer(worker, tokens, address="127.0.0.1:0", **kwargs).start()


def _split(model):
    return split_model(model, ("conv2", "fc2"), torch.zeros(2, 1, 8, 8))


def test_one_batch_over_the_data_plane_equals_one_sgd_step_of_the_unsplit_model():
    torch.manual_seed(0)
    model = SmallCNN()
    split = _split(model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    reference = copy.deepcopy(model)
    optimizer = _sgd(reference.parameters())
    nn.functional.cross_entropy(reference(x), y).backward()
    optimizer.step()

    server = _serve(split.body, {"1": "secret"})
    try:
        head_tail_opt = _sgd(itertools.chain(split.head.parameters(), split.tail.parameters()))
        with HelperClient(server.address, "1", "secret", deadline=30) as helper:
            result = train_split(
                split.head, split.tail, helper, [(x, y)], nn.functional.cross_entropy, head_tail_opt
            )
        assert server.wait_clients(10)
    finally:
        server.stop()
    assert result.examples == 16 and result.batches == 1
    trained = {
        **split.head.state_dict(),
        **server.worker.bodies["1"].module.state_dict(),
        **split.tail.state_dict(),
    }
    expected = reference.state_dict()
    assert trained.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(trained[key], value, atol=1e-5, rtol=0, msg=key)
    assert not torch.equal(expected["conv2.weight"], model.state_dict()["conv2.weight"])


@pytest.mark.parametrize(
    ("client", "token", "reason"),
    [
        ("a", "wrong", "wrong round token for client 'a'"),
        ("a", "", "wrong round token for client 'a'"),
        ("mallory", "token-a", "not served by this helper"),
    ],
)
def test_bad_tokens_are_refused_and_the_other_clients_finish(client, token, reason):
    torch.manual_seed(0)
    split = _split(SmallCNN())
    tokens = {"a": "token-a", "b": "token-b"}
    server = _serve(split.body, tokens)
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))) for _ in range(2)]
    try:
        intruder = HelperClient(server.address, client, token, deadline=10)
        with intruder, pytest.raises(DataPlaneError, match="UNAUTHENTICATED") as refused:
            intruder.forward(torch.randn(4, 16, 8, 8))
        assert reason in str(refused.value)
        for name in tokens:
            head, tail = copy.deepcopy(split.head), copy.deepcopy(split.tail)
            opt = _sgd(itertools.chain(head.parameters(), tail.parameters()))
            with HelperClient(server.address, name, tokens[name], deadline=10) as helper:
                result = train_split(head, tail, helper, batches, nn.functional.cross_entropy, opt)
            assert result.batches == 2
        assert server.wait_clients(10)
    finally:
        server.stop()
    assert sorted(server.finished) == ["a", "b"]
    assert len(server.refused) == 1 and reason in server.refused[0]


def test_bad_frames_get_a_clear_error_and_the_helper_carries_on():
    split = _split(SmallCNN())
    server = _serve(split.body, {"a": "t"})
    try:
        with HelperClient(server.address, "a", "t", deadline=10) as helper:
            with pytest.raises(DataPlaneError, match="INVALID_ARGUMENT"):
                helper.forward(torch.randn(4, 3, 2))  # wrong shape for the body
            with pytest.raises(DataPlaneError, match="NaN"):
                helper.forward(torch.full((4, 16, 8, 8), float("nan")))
            out = helper.forward(torch.randn(4, 16, 8, 8))
            assert out.shape == (4, 64)
    finally:
        server.stop()


def test_a_missing_helper_fails_within_the_deadline():
    helper = HelperClient("127.0.0.1:1", "a", "t", deadline=1.0)
    with helper, pytest.raises(DataPlaneError, match=r"DEADLINE_EXCEEDED|UNAVAILABLE"):
        helper.forward(torch.zeros(1, 2))
