"""Tests for flsplit.model.splitting: cut points, key partition and exactness of split training."""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision import models

from flsplit.model.splitting import (
    SplitModel,
    candidate_cuts,
    part_state_keys,
    resolve_cuts,
    split_model,
)

TOL = 1e-6
EXAMPLE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class SmallCNN(nn.Module):
    """CIFAR-sized CNN with functional ops between modules, BatchNorm and Dropout."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 8 * 8, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18": lambda: models.resnet18(num_classes=10),
    "resnet50": lambda: models.resnet50(num_classes=10),
    "vgg11": lambda: models.vgg11(num_classes=10),
    "mobilenet_v2": lambda: models.mobilenet_v2(num_classes=10),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    """A freshly initialised model (shared per module; tests must not modify it)."""
    torch.manual_seed(0)
    return MODELS[request.param]().train()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small batches gain nothing from intra-op threads, which stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _free_memory(request: pytest.FixtureRequest) -> Iterator[None]:
    """fx graphs hold reference cycles: collect finished VGG-11 splits (0.5 GB each)."""
    yield
    if "vgg" in request.node.name:
        gc.collect()


def _cut_step(split: SplitModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One training step as a data plane runs it: detach and re-attach at every cut."""
    head, body, tail = split.parts
    a1 = head(x)
    b1 = a1.detach().requires_grad_()
    a2 = body(b1)
    b2 = a2.detach().requires_grad_()
    logits = tail(b2)
    loss = F.cross_entropy(logits, y)
    loss.backward()  # tail backward
    a2.backward(b2.grad)  # body backward from the cut gradient
    a1.backward(b1.grad)  # head backward
    return logits


def _state_and_grads(modules: list[nn.Module]) -> dict[str, torch.Tensor]:
    """state_dict entries of ``modules`` plus ``grad/<key>`` for every parameter."""
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        out.update(module.state_dict())
        for name, param in module.named_parameters():
            assert param.grad is not None, name
            out[f"grad/{name}"] = param.grad
    return out


def test_train_step_matches_unsplit(model: nn.Module) -> None:
    _check_train_step(model, None)


@pytest.mark.parametrize(
    ("name", "cuts"), [("resnet18", ["layer2", "layer4"]), ("mobilenet_v2", [5, -3])]
)
def test_train_step_matches_unsplit_deeper_cuts(name: str, cuts: list[str | int]) -> None:
    torch.manual_seed(0)
    _check_train_step(MODELS[name]().train(), cuts)


def _check_train_step(model: nn.Module, cuts: list[str | int] | None) -> None:
    """Compare one split training step with one step of the unsplit model."""
    full = copy.deepcopy(model)
    split = split_model(full, cuts, EXAMPLE)  # deep copy: identical weights, own tensors
    assert len(split.parts) == 3
    x = torch.randn(3, 3, 32, 32)  # batch size differs from the example input
    y = torch.tensor([1, 4, 9])

    torch.manual_seed(1)  # same dropout masks in both runs
    logits_full = full(x)
    F.cross_entropy(logits_full, y).backward()
    torch.manual_seed(1)
    logits_split = _cut_step(split, x, y)

    torch.testing.assert_close(logits_split, logits_full, rtol=0, atol=TOL)
    expected = _state_and_grads([full])
    got = _state_and_grads(split.parts)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert torch.equal(got[key], value) or (got[key] - value).abs().max() <= TOL, key
    # the step really updated BatchNorm statistics (where the model has BatchNorm)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert got[key] == value + 1


def test_eval_mode_matches_unsplit(model: nn.Module) -> None:
    full = copy.deepcopy(model)
    split = split_model(full, None, EXAMPLE)
    x = torch.randn(3, 3, 32, 32)
    # make the running statistics non-trivial first, in train mode
    with torch.no_grad():
        torch.manual_seed(2)
        full(x)
        torch.manual_seed(2)
        split.forward(x)
    full.eval()
    split.eval()
    assert not any(m.training for part in split.parts for m in part.modules())
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = full(x)
        got = split.forward(x)
        again = split.forward(x)  # no dropout randomness left
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    # and back to train mode: BatchNorm statistics move again
    split.train()
    before = {k: v.clone() for k, v in split.state_dict().items()}
    with torch.no_grad():
        split.forward(x)
    changed = [k for k, v in split.state_dict().items() if not torch.equal(v, before[k])]
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in full.modules())
    assert bool(changed) == has_bn


def test_keys_partition_state_dict(model: nn.Module) -> None:
    full_keys = list(model.state_dict())
    split = split_model(model, None, EXAMPLE, share_weights=True)
    per_part = [split.part_keys(i) for i in range(len(split.parts))]
    assert part_state_keys(model, None, EXAMPLE) == per_part
    seen: set[str] = set()
    for part, keys in zip(split.parts, per_part, strict=True):
        assert set(part.state_dict()) == set(keys)
        assert set(keys) <= set(full_keys)
        assert not seen & set(keys)
        seen |= set(keys)
        assert keys == [k for k in full_keys if k in set(keys)]  # full model's order
    assert seen == set(full_keys)
    assert list(split.state_dict()) == full_keys


def test_default_is_u_shape(model: nn.Module) -> None:
    cands = candidate_cuts(model, EXAMPLE)
    assert len(cands) >= 2
    assert resolve_cuts(model, None, EXAMPLE) == (cands[0], cands[-1])
    first_module = next(name for name, _ in model.named_children())
    assert first_module not in cands


def test_resnet18_candidates_and_aliases() -> None:
    model = models.resnet18(num_classes=10)
    cands = candidate_cuts(model, EXAMPLE)
    assert cands == [
        "bn1", "relu", "maxpool", "layer1", "layer1.1", "layer2", "layer2.1",
        "layer3", "layer3.1", "layer4", "layer4.1", "avgpool", "fc",
    ]  # fmt: skip
    # modules starting at the same point resolve to the outermost name
    assert resolve_cuts(model, ["layer2.0", "layer4.0.conv1"], EXAMPLE) == ("layer2", "layer4")


def test_cut_by_name_and_index_agree() -> None:
    model = models.resnet18(num_classes=10)
    cands = candidate_cuts(model, EXAMPLE)
    by_index = resolve_cuts(model, [3, 5, -1], EXAMPLE)
    assert by_index == resolve_cuts(model, ["layer1", "layer2", "fc"], EXAMPLE)
    assert by_index == (cands[3], cands[5], cands[-1])
    mixed = split_model(model, ["layer1", 5, "fc"], EXAMPLE)
    named = split_model(model, ["layer1", "layer2", "fc"], EXAMPLE)
    assert mixed.cuts == named.cuts
    assert [mixed.part_keys(i) for i in range(4)] == [named.part_keys(i) for i in range(4)]
    with pytest.raises(ValueError, match="3 parts"):
        _ = mixed.body


@pytest.mark.parametrize(
    ("cuts", "bad"),
    [
        (["layer2.0.bn1", "fc"], "'layer2.0.bn1'"),  # inside a residual block
        (["layer2", "no_such_layer"], "'no_such_layer'"),
        (["conv1"], "'conv1'"),  # the very first module
        ([13], "13"),
        ([-14], "-14"),
        (["fc", "layer2"], "'layer2'"),  # out of order
        (["layer2", 5], "'layer2'"),  # duplicate
    ],
)
def test_invalid_cuts_raise(cuts: list[str | int], bad: str) -> None:
    model = models.resnet18(num_classes=10)
    with pytest.raises(ValueError) as info:
        split_model(model, cuts, EXAMPLE)
    message = str(info.value)
    assert bad in message
    assert "valid cuts" in message and "'layer3.1'" in message


def test_parts_do_not_share_tensors_unless_asked() -> None:
    model = SmallCNN()
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    own = split_model(model, None, EXAMPLE)
    assert not any(t.data_ptr() in ptrs for t in own.state_dict().values())
    shared = split_model(model, None, EXAMPLE, share_weights=True)
    assert all(t.data_ptr() in ptrs for t in shared.state_dict().values())


def test_analysis_does_not_modify_model() -> None:
    model = models.resnet18(num_classes=10).train()
    model.layer2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    attrs = set(vars(model))
    candidate_cuts(model, EXAMPLE)
    part_state_keys(model, [2, 6], EXAMPLE)
    split = split_model(model, None, EXAMPLE)
    assert [m.training for m in model.modules()] == modes
    assert set(vars(model)) == attrs
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert split.head.training and not split.body.layer2.training  # modes copied


def test_inplace_first_op_gets_a_private_input() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)
    )
    for example in (EXAMPLE, None):
        split = split_model(model, ["1", "3"], example)
        cut = split.head(EXAMPLE).detach().requires_grad_()
        out = split.body(cut)  # would raise for an in-place op on a leaf
        out.sum().backward()
        assert cut.grad is not None and cut._version == 0


def test_training_dependent_forward_is_refused() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            return self.b(x * 2 if self.training else x)

    with pytest.raises(ValueError, match=r"self\.training"):
        candidate_cuts(Branchy(), torch.randn(2, 4))


def test_extra_state_is_partitioned() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 8)
            self.scale = nn.Parameter(torch.ones(8))  # owned by the root, used via get_attr
            self.register_buffer("shift", torch.zeros(8))
            self.unused = nn.Linear(8, 8)  # never called
            self.mid = nn.Sequential(nn.ReLU(), nn.Linear(8, 8))
            self.out = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x) * self.scale + self.shift
            return self.out(self.mid(x))

    model = Net()
    x = torch.randn(3, 4)
    assert candidate_cuts(model, x) == ["mid", "mid.1", "out"]
    split = split_model(model, None, x)
    keys = [split.part_keys(i) for i in range(3)]
    # state never used in forward goes to the part of its nearest relative (else the head)
    assert keys[0] == ["scale", "shift", "stem.weight", "stem.bias", "unused.weight", "unused.bias"]
    assert keys[1] == ["mid.1.weight", "mid.1.bias"]
    assert sorted(k for part in keys for k in part) == sorted(model.state_dict())
    torch.testing.assert_close(split.forward(x), model(x), rtol=0, atol=0)


_RESNET18 = models.resnet18(num_classes=10).eval()
_RESNET18_CUTS = candidate_cuts(_RESNET18, EXAMPLE)


@settings(max_examples=5, deadline=None)
@given(
    picks=st.sets(st.integers(0, len(_RESNET18_CUTS) - 1), min_size=1, max_size=3),
    with_example=st.booleans(),
    batch=st.integers(1, 3),
)
def test_any_candidate_cuts_compose_to_the_model(
    picks: set[int], with_example: bool, batch: int
) -> None:
    cuts = sorted(picks)
    split = split_model(_RESNET18, cuts, EXAMPLE if with_example else None, share_weights=True)
    assert split.cuts == tuple(_RESNET18_CUTS[i] for i in cuts)
    assert len(split.parts) == len(cuts) + 1
    keys = [k for i in range(len(split.parts)) for k in split.part_keys(i)]
    assert sorted(keys) == sorted(_RESNET18.state_dict())
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(split.forward(x), _RESNET18(x), rtol=0, atol=TOL)


def test_tensor_constants_stay_out_of_state_dict() -> None:
    class WithConstants(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + torch.ones(4))  # traced as a tensor constant

    model = WithConstants()
    attrs = set(vars(model))
    x = torch.randn(3, 4)
    split = split_model(model, ["b"], x)
    assert set(vars(model)) == attrs
    assert [split.part_keys(i) for i in range(2)] == [
        ["a.weight", "a.bias"],
        ["b.weight", "b.bias"],
    ]
    torch.testing.assert_close(split.forward(x), model(x), rtol=0, atol=0)
