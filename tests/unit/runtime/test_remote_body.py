"""A client's own training loop on the split model over the real data plane equals the
same loop on the unsplit model (float64), and what cannot follow is refused."""

import copy
import time

import pytest
import torch
from torch import nn

from flsplit.model.client_view import ClientModel
from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import DataPlaneError, HelperClient
from flsplit.runtime.remote_body import RemoteBody, SplitTrainingError
from flsplit.runtime.worker import HelperWorker

SECRET = new_run_secret()
RUN, ROUND, HELPER = 3, 1, 7
KEY = helper_key(SECRET, RUN, HELPER)
CUTS = ("conv2", "fc2")


def _batches(n=4, size=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 1, 8, 8, generator=gen, dtype=torch.float64),
         torch.randint(0, 10, (size,), generator=gen))
        for _ in range(n)
    ]


def _model():
    torch.manual_seed(0)
    return SmallCNN().double()


def _train_split(model, loop, batches, proximal_mu=0.0, emulation=NO_EMULATION):
    """Run ``loop(net, batches)`` on the split model through a helper over gRPC; return
    the trained full state dict (head, the helper's body, tail)."""
    split = split_model(model, CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    worker = HelperWorker(
        {"1": copy.deepcopy(split.body)},
        lambda params: torch.optim.SGD(params, lr=123.0),  # never used: the client's rules
        proximal_mu=proximal_mu,
    )
    server = HelperServer(
        worker, TokenVerifier(KEY, RUN, ROUND, HELPER, ["1"]), address="127.0.0.1:0"
    ).start()
    try:
        token = sign_token(KEY, RUN, ROUND, "1", HELPER)
        with (
            HelperClient(server.address, "1", token, deadline=30) as helper,
            RemoteBody(helper, split.head, split.tail, emulation) as body,
        ):
            net = ClientModel(split.head, split.tail, body, ["conv2", "fc1"])
            loop(net, batches)
            result = body.finish()
        assert server.wait_clients(10)
    finally:
        server.stop()
    return {
        **split.head.state_dict(),
        **worker.bodies["1"].module.state_dict(),
        **split.tail.state_dict(),
    }, result


def _slow_loader(net, batches, seconds=0.1):
    """The app's own loop over a loader that takes ``seconds`` per batch."""

    def loader():
        for batch in batches:
            time.sleep(seconds)
            yield batch

    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for x, y in loader():
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def test_the_apps_loader_time_between_batches_is_the_clients_load_time():
    batches = _batches(n=3)
    _, result = _train_split(_model(), _slow_loader, batches)
    assert result.batches == 3
    assert result.load_ms >= 100.0  # mean per batch: each batch waited 0.1 s for the loader
    # the wait is not also counted in a stage (stage 5 ends with the optimizer's step):
    # stages, helper time and loading never overlap
    busy = result.stage1_ms + result.stage3_ms + result.stage5_ms + result.helper_service_ms
    assert result.batches * (busy + result.load_ms) <= 1000 * result.wall_seconds + 5
    assert result.stage1_ms > 0 and result.stage5_ms > 0


class _RecordingEmulation(Emulation):
    """A slow device that records where each stretched span of compute began."""

    def __init__(self) -> None:
        super().__init__(compute_factor=30.0)
        object.__setattr__(self, "starts", [])

    def stretch(self, start: float, cpu_start: float) -> None:
        self.starts.append(start)


def test_the_set_up_before_the_first_batch_is_not_stretched_as_device_compute():
    # a process's first optimizer pulls in imports worth seconds of CPU: stretched by a
    # Raspberry Pi's factor (30) it held a first round up by a minute
    emulation = _RecordingEmulation()
    set_up = []

    def loop(net, batches):
        set_up.append(time.perf_counter())
        _slow_loader(net, batches, seconds=0.0)

    _, result = _train_split(_model(), loop, _batches(n=3), emulation=emulation)
    assert result.batches == 3
    assert emulation.starts  # the batches' compute is stretched
    assert min(emulation.starts) > set_up[0]  # nothing from before the first head forward


def _assert_same(trained, reference, untouched):
    assert trained.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(trained[key], value, atol=1e-5, rtol=0, msg=key)
    # the body really trained (the check would pass vacuously otherwise)
    assert not torch.equal(reference["conv2.weight"], untouched["conv2.weight"])


def _sgd_momentum_wd(net, batches):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    net.train()
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def _adam(net, batches):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for x, y in batches:
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(net(x), y).backward()
        optimizer.step()


def _step_lr(net, batches):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        scheduler.step()


def _accumulate_two(net, batches):
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    optimizer.zero_grad()
    for i, (x, y) in enumerate(batches):
        (nn.functional.cross_entropy(net(x), y) / 2).backward()
        if i % 2 == 1:
            optimizer.step()
            optimizer.zero_grad()


MU = 0.5


def _fedprox(net, batches):
    start = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        optimizer.zero_grad()
        proximal = sum(((w - w0) ** 2).sum() for w, w0 in zip(net.parameters(), start, strict=True))
        loss = nn.functional.cross_entropy(net(x), y) + MU / 2 * proximal
        loss.backward()
        optimizer.step()


LOOPS = {
    "sgd-momentum-weight-decay": (_sgd_momentum_wd, 0.0),
    "adam": (_adam, 0.0),
    "step-lr": (_step_lr, 0.0),
    "accumulate-2": (_accumulate_two, 0.0),
    "fedprox": (_fedprox, MU),
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_the_apps_own_loop_on_the_split_model_equals_it_on_the_unsplit_model(name):
    loop, mu = LOOPS[name]
    model = _model()
    untouched = copy.deepcopy(model.state_dict())
    batches = _batches()
    reference = copy.deepcopy(model)
    loop(reference, batches)
    trained, result = _train_split(model, loop, batches, proximal_mu=mu)
    _assert_same(trained, reference.state_dict(), untouched)
    assert result.batches == len(batches) and result.examples == sum(len(y) for _, y in batches)
    assert result.stage1_ms > 0 and result.stage3_ms > 0 and result.stage5_ms > 0


def test_the_client_model_looks_like_the_full_model_for_its_local_parts():
    model = _model()
    split = split_model(model, CUTS, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    net = ClientModel(split.head, split.tail, lambda t: t, ["conv2", "fc1"])
    names = set(net.state_dict())
    assert names == set(split.head.state_dict()) | set(split.tail.state_dict())
    assert names < set(model.state_dict())
    assert net.fc2 is split.tail.fc2  # reached by the full model's names
    with pytest.raises(AttributeError, match="'fc1' runs on the helper"):
        _ = net.fc1
    net.float()
    assert all(p.dtype == torch.float32 for p in split.head.parameters())
    assert net.conv1.weight is split.head.conv1.weight
    net.eval()
    assert not split.tail.training and not net.training
    clone = copy.deepcopy(net)
    assert clone.conv1.weight is not net.conv1.weight
    torch.testing.assert_close(clone.conv1.weight, net.conv1.weight)


def _plain_loop(model, optimizer, batches, after_backward=lambda: None):
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        after_backward()
        optimizer.step()


def _refused(loop, match):
    with pytest.raises((SplitTrainingError, DataPlaneError), match=match):
        _train_split(_model(), loop, _batches(n=2))


def test_clipping_by_the_global_norm_is_refused_with_the_reason():
    def clipping(net, batches):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        _plain_loop(net, optimizer, batches,
                    lambda: torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0))

    _refused(clipping, "clip_grad_norm_ .* stay on the helper")
    # outside a round, clipping works as ever
    layer = nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().backward()
    torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)


def test_a_custom_optimizer_class_is_refused_by_name():
    class MySGD(torch.optim.SGD):
        pass

    def custom(net, batches):
        _plain_loop(net, MySGD(net.parameters(), lr=0.1), batches)

    _refused(custom, "MySGD")


def test_evaluating_inside_the_training_function_is_refused():
    def validating(net, batches):
        with torch.no_grad():
            net(batches[0][0])

    _refused(validating, "without autograd")


def test_a_training_function_that_never_calls_the_model_is_refused():
    def own_model(net, batches):
        other = SmallCNN().double()
        _plain_loop(other, torch.optim.SGD(other.parameters(), lr=0.1), batches)

    _refused(own_model, "never trained the model it was given")


def test_param_groups_with_different_hyperparameters_are_refused():
    def grouped(net, batches):
        optimizer = torch.optim.SGD(
            [{"params": list(net.conv1.parameters()), "lr": 0.01},
             {"params": list(net.fc2.parameters())}], lr=0.1,
        )
        _plain_loop(net, optimizer, batches)

    _refused(grouped, "differ in lr")


def test_a_method_of_the_model_that_is_not_its_forward_is_refused_naming_it():
    class WithFeatures(SmallCNN):
        def features(self, x):
            return self.conv1(x)

    torch.manual_seed(0)
    model = WithFeatures()
    split = split_model(model, CUTS, torch.zeros(2, 1, 8, 8))
    net = ClientModel(split.head, split.tail, lambda t: t, ["conv2", "fc1"], split.model_type)
    with pytest.raises(AttributeError, match=r"WithFeatures.features is not part of the split"):
        net.features(torch.zeros(1, 1, 8, 8))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = net.nothing
