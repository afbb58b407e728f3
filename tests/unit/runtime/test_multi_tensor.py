"""Cuts that carry several tensors, over the real data plane (HelperServer + HelperClient):
a hidden state that needs a gradient, a bool mask and a float table without one cross both
cuts of a toy model. Three AdamW steps through flsplit's own loop (whole batches and
micro-batches), through the helper's shared memory mode, and through the app's own
training function equal the unsplit model's within 1e-6 (float64); chains and synchronous
steps refuse such cuts naming the setting."""

import copy
import itertools

import numpy as np
import pytest
import torch

from flsplit.model.client_view import ClientModel
from flsplit.model.outputs import correct_count
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.checks import InputError
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import DataPlaneError, HelperClient
from flsplit.runtime.remote_body import RemoteBody
from flsplit.runtime.sync_helper import SyncWorker
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker
from flsplit.task import evaluate_model, train_full
from tests.unit.runtime import multi_tensor_toy as toy

SECRET = new_run_secret()
RUN, ROUND, HELPER = 11, 3, 21
KEY = helper_key(SECRET, RUN, HELPER)
TOKEN = sign_token(KEY, RUN, ROUND, "1", HELPER)


def _adamw(params):
    return torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)


def _reference(batches):
    """Three AdamW steps of the unsplit model."""
    full = toy.model()
    optimizer = _adamw(full.parameters())
    for inputs, labels in batches:
        optimizer.zero_grad()
        toy.loss_fn(full(**inputs).logits, labels).backward()
        optimizer.step()
    return toy.parts_state(full)


def _serve(body, memory_mode="per-client", next_hops=None):
    worker = HelperWorker({"1": body}, _adamw, memory_mode=memory_mode)
    verifier = TokenVerifier(KEY, RUN, ROUND, HELPER, ["1"])
    server = HelperServer(
        worker, verifier, address="127.0.0.1:0", next_hops=next_hops, in_flight=4
    ).start()
    return worker, server


def _assert_equal(trained, reference):
    for part, state in reference.items():
        for key, value in state.items():
            assert torch.allclose(trained[part][key], value, rtol=0, atol=1e-6), (part, key)
    # the steps moved the weights: equality is not that of untrained models
    start = toy.parts_state(toy.model())
    assert not torch.allclose(start["body"]["mix.weight"], reference["body"]["mix.weight"])


@pytest.mark.parametrize(
    ("micro_batches", "memory_mode"), [(1, "per-client"), (3, "per-client"), (1, "shared")]
)
def test_flsplits_own_loop_over_multi_tensor_cuts_equals_the_unsplit_model(
    micro_batches, memory_mode
):
    batches = toy.batches()
    split = toy.split(toy.model())
    worker, server = _serve(split.body, memory_mode)
    try:
        with HelperClient(server.address, "1", TOKEN, deadline=30) as helper:
            optimizer = _adamw(itertools.chain(split.head.parameters(), split.tail.parameters()))
            result = train_split(
                split.head, split.tail, helper, batches, toy.loss_fn, optimizer,
                micro_batches=micro_batches,
            )
        assert server.wait_clients(10)
        body = worker.bodies["1"]
    finally:
        server.stop()
    trained = {
        "head": split.head.state_dict(),
        "body": body.module.state_dict(),
        "tail": split.tail.state_dict(),
    }
    _assert_equal(trained, _reference(batches))
    assert result.batches == 3 and result.examples == 18
    assert body.batches == 3 and body.examples == 18
    assert 0.0 <= result.accuracy <= 1.0  # token accuracy, counted per example


def test_the_apps_own_training_function_over_multi_tensor_cuts_equals_the_unsplit_model():
    batches = toy.batches()
    split = toy.split(toy.model())
    worker, server = _serve(copy.deepcopy(split.body))
    try:
        with (
            HelperClient(server.address, "1", TOKEN, deadline=30) as helper,
            RemoteBody(helper, split.head, split.tail) as remote,
        ):
            net = ClientModel(split.head, split.tail, remote, ["mix"])
            optimizer = _adamw(net.parameters())
            for inputs, labels in batches:  # the app's loop, as it trains the unsplit model
                optimizer.zero_grad()
                toy.loss_fn(net(**inputs).logits, labels).backward()
                optimizer.step()
            result = remote.finish()
        assert server.wait_clients(10)
    finally:
        server.stop()
    trained = {
        "head": split.head.state_dict(),
        "body": worker.bodies["1"].module.state_dict(),
        "tail": split.tail.state_dict(),
    }
    _assert_equal(trained, _reference(batches))
    assert result.batches == 3


def test_only_the_flagged_tensors_get_gradients_back():
    split = toy.split(toy.model())
    worker, server = _serve(split.body)
    (inputs, _), *_ = toy.batches(n=1)
    try:
        with HelperClient(server.address, "1", TOKEN, deadline=30) as helper:
            hidden, mask, table = split.head(inputs)
            assert hidden.requires_grad and not table.requires_grad
            idle = worker.held_bytes()
            out = helper.forward((hidden, mask, table))
            # the pending forward's inputs and outputs are held: all three tensors each
            held = sum(t.numel() * t.element_size() for t in (hidden, mask, table))
            assert worker.held_bytes() - idle >= held + out[0].numel() * 8
            # the hidden state needs a gradient, the mask and the doubled table do not
            assert [t.requires_grad for t in out] == [True, False, False]
            assert out[1].dtype == torch.bool and torch.equal(out[1], mask)
            grads = helper.backward((torch.ones_like(out[0]),))
            assert isinstance(grads, tuple) and len(grads) == 1
            assert grads[0].shape == hidden.shape
            helper.finish()
    finally:
        server.stop()


def test_a_gradient_tuple_that_does_not_fit_is_refused_naming_the_tensor():
    split = toy.split(toy.model())
    _, server = _serve(split.body)
    (inputs, _), *_ = toy.batches(n=1)
    try:
        with HelperClient(server.address, "1", TOKEN, deadline=30) as helper:
            out = helper.forward(split.head(inputs))
            with pytest.raises(DataPlaneError, match="3 gradients arrived; 1 tensors"):
                helper.backward(tuple(torch.zeros_like(t, dtype=torch.float64) for t in out))
            with pytest.raises(DataPlaneError, match=r"tensors\[0\] shape"):
                helper.backward((torch.zeros(2, 2, dtype=torch.float64),))
            helper.backward((torch.zeros_like(out[0]),))  # the client's state was kept
            helper.finish()
    finally:
        server.stop()


def test_a_helper_chain_refuses_a_multi_tensor_cut_naming_chain_length():
    split = toy.split(toy.model())
    # the next hop is never dialled: the cut is refused first
    hop = HelperClient("127.0.0.1:9", "1", "token", deadline=2)
    worker, server = _serve(split.body, next_hops={"1": hop})
    (inputs, _), *_ = toy.batches(n=1)
    try:
        with (
            HelperClient(server.address, "1", TOKEN, deadline=30) as helper,
            pytest.raises(DataPlaneError) as refused,
        ):
            helper.forward(split.head(inputs))
        message = str(refused.value)
        assert "FAILED_PRECONDITION" in message
        assert "carries 3 tensors" in message and "use chain-length 1" in message
        assert not worker.bodies["1"].inputs  # the body never ran
    finally:
        server.stop()


def test_synchronous_steps_refuse_a_multi_tensor_cut_naming_the_sampler():
    split = toy.split(toy.model())
    worker = SyncWorker(split.body, ["1"], np.array([[6]]), _adamw)
    (inputs, _), *_ = toy.batches(n=1)
    try:
        with pytest.raises(InputError, match=r"carries 3 tensors; synchronous steps.*sampler"):
            worker.submit_step("1", "fwd", 0, tuple(t.detach() for t in split.head(inputs)))
    finally:
        worker.stop()


def test_the_unsplit_models_own_training_and_evaluation_take_named_inputs_and_model_outputs():
    batches = toy.batches()
    full = toy.model()
    loss, accuracy, examples = train_full(full, batches, toy.loss_fn, _adamw(full.parameters()))
    assert examples == 18 and 0.0 <= accuracy <= 1.0
    _assert_equal(toy.parts_state(full), _reference(batches))
    full.eval()
    with torch.no_grad():
        outputs = [(full(**inputs).logits, labels) for inputs, labels in batches]
    loss, accuracy, examples = evaluate_model(full, batches, toy.loss_fn)
    assert examples == 18
    assert loss == pytest.approx(sum(float(toy.loss_fn(o, y)) for o, y in outputs) / 3)
    # per example: the fraction of its labelled (unmasked) tokens predicted right
    right = [
        float((o[i].argmax(-1) == y[i])[y[i] != -100].double().mean())
        for o, y in outputs
        for i in range(y.shape[0])
    ]
    assert accuracy == pytest.approx(sum(right) / 18)
    assert correct_count(*outputs[0]) == pytest.approx(sum(right[:6]))


def test_the_client_model_takes_one_input_or_keyword_inputs():
    split = toy.split(toy.model())
    net = ClientModel(split.head, split.tail, lambda act: toy.Body().double()(*act))
    (inputs, _), *_ = toy.batches(n=1)
    assert net(**inputs).logits.shape == (6, toy.SEQ, toy.VOCAB)
    assert net(inputs).logits.shape == (6, toy.SEQ, toy.VOCAB)
    with pytest.raises(TypeError, match="one input or keyword inputs only"):
        net(inputs["ids"], inputs["mask"])
