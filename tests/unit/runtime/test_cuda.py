"""The split model on a GPU: exactness and the data plane with a GPU helper.

Run only where torch sees a CUDA device; the CPU tests run the same device-handling code
with CPU tensors (tests/unit/runtime/test_remote_body.py, test_dataplane.py).
"""

import copy

import pytest
import torch
from torch import nn

from flsplit.model.client_view import ClientModel
from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import HelperClient
from flsplit.runtime.remote_body import RemoteBody
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())"
)
KEY = helper_key(new_run_secret(), 1, 2)


def _serve(body):
    worker = HelperWorker({"1": body}, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    server = HelperServer(worker, TokenVerifier(KEY, 1, 1, 2, ["1"]), address="127.0.0.1:0")
    return worker, server.start()


def _batches(device="cpu"):
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8, 1, 8, 8, generator=gen, dtype=torch.float64).to(device),
         torch.randint(0, 10, (8,), generator=gen).to(device))
        for _ in range(3)
    ]


def _loop(net, batches):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def _trained(split, worker):
    state = {**split.head.state_dict(), **worker.bodies["1"].module.state_dict(),
             **split.tail.state_dict()}
    return {k: v.cpu() for k, v in state.items()}


def test_the_apps_loop_on_a_gpu_client_and_gpu_helper_equals_the_unsplit_model():
    torch.manual_seed(0)
    model = SmallCNN().double()
    reference = copy.deepcopy(model).cuda()
    _loop(reference, _batches("cuda"))
    split = split_model(model, ("conv2", "fc2"), torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    worker, server = _serve(copy.deepcopy(split.body).cuda())
    try:
        token = sign_token(KEY, 1, 1, "1", 2)
        with (
            HelperClient(server.address, "1", token) as helper,
            RemoteBody(helper, split.head, split.tail) as body,
        ):
            net = ClientModel(split.head, split.tail, body).cuda()
            _loop(net, _batches("cuda"))
            body.finish()
    finally:
        server.stop()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(_trained(split, worker)[key], value.cpu(), atol=1e-5,
                                   rtol=0, msg=key)


def test_a_data_plane_step_on_a_gpu_helper_equals_the_unsplit_step(monkeypatch):
    # the reference runs on the CPU: no TensorFloat-32 shortcuts on the GPU side
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = SmallCNN()
    reference = copy.deepcopy(model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(reference(x), y).backward()
    optimizer.step()
    split = split_model(model, ("conv2", "fc2"), torch.zeros(2, 1, 8, 8))
    worker, server = _serve(copy.deepcopy(split.body).cuda())
    try:
        params = [*split.head.parameters(), *split.tail.parameters()]
        with HelperClient(server.address, "1", sign_token(KEY, 1, 1, "1", 2)) as helper:
            train_split(split.head, split.tail, helper, [(x, y)], nn.functional.cross_entropy,
                        torch.optim.SGD(params, lr=0.1, momentum=0.9))
    finally:
        server.stop()
    assert next(worker.bodies["1"].module.parameters()).is_cuda
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(_trained(split, worker)[key], value, atol=1e-5, rtol=1e-5,
                                   msg=key)
