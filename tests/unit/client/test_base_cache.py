"""A helper's bodies share one copy of the frozen base: per-client bodies point at the
same frozen tensors, a shared body is one module."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, RecordDict

from flsplit.client.base_cache import part_state
from flsplit.client.helper_role import _build_bodies
from flsplit.client.records import load_part
from flsplit.config import RunConfig
from flsplit.model.zoo import AdaptedMLP
from flsplit.protocol import ServedClient
from flsplit.task import SplitTask

CUTS = "hidden0,norm"


def _model(config):
    torch.manual_seed(0)
    return AdaptedMLP(inputs=16, width=32, rank=2, depth=2)


TASK = SplitTask(model_fn=_model, load_data=lambda *a: ([], []),
                 example_input=lambda config: torch.zeros(2, 16))


def _bodies(memory: str, clients: int = 3):
    config = RunConfig.parse({"helper-memory": memory, "cuts": CUTS})
    served = [ServedClient(str(c), CUTS, 1) for c in range(clients)]
    state = ArrayRecord(_model({}).state_dict())
    context, shared, frozen = Context(7, 11, {}, RecordDict(), {}), {}, set()

    def load(body):  # as the helper's handler loads each body it builds
        weights = part_state(context, (body,), state, "h", shared)
        load_part(body, weights.state, assign=weights.frozen)
        frozen.update(weights.frozen)

    bodies, _ = _build_bodies(TASK, config, torch.zeros(2, 16), served, load)
    return bodies, frozen


def _pointers(module: torch.nn.Module, trainable: bool) -> dict[str, int]:
    return {n: p.data_ptr() for n, p in module.named_parameters()
            if p.requires_grad == trainable}


def test_per_client_bodies_share_the_frozen_tensors_and_not_the_adapters():
    bodies, frozen = _bodies("per-client")
    first, *others = bodies.values()
    assert set(_pointers(first, False)) == frozen == {
        "hidden0.base.weight", "hidden0.base.bias", "hidden1.base.weight", "hidden1.base.bias"}
    reference = _model({}).state_dict()
    for name, param in first.named_parameters():
        assert torch.equal(param, reference[name]), name  # the message's weights
    for body in others:
        assert body is not first
        assert _pointers(body, False) == _pointers(first, False)
        assert not set(_pointers(body, True).values()) & set(_pointers(first, True).values())
        assert all(not p.requires_grad for n, p in body.named_parameters() if n in frozen)


def test_a_shared_body_is_one_module_whatever_the_clients():
    bodies, _ = _bodies("shared", clients=5)
    assert len({id(b) for b in bodies.values()}) == 1
