"""Transformer models split across a client and a helper over the real data plane
(HelperServer + HelperClient): three AdamW steps in float64 equal the unsplit model's
within 1e-6 for a BERT classifier with padding masks, a GPT-2-style causal LM,
torchvision's ViT cut between encoder layers and the LM with LoRA adapters on a frozen
base, whose frozen weights stay unchanged bit for bit. Micro-batches and the app's own
training function (``ClientModel``) run the same steps."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from typing import Any

import peft
import pytest
import torch
import torchvision
import transformers
from torch import nn

from flsplit.model.client_view import ClientModel
from flsplit.model.outputs import logits_of
from flsplit.model.splitting import split_model
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.helper_client import HelperClient
from flsplit.runtime.remote_body import RemoteBody
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker

SECRET = new_run_secret()
RUN, ROUND, HELPER = 5, 2, 9
KEY = helper_key(SECRET, RUN, HELPER)
TOKEN = sign_token(KEY, RUN, ROUND, "1", HELPER)
VOCAB, LENGTH, BATCH = 50, 6, 4
TOL = 1e-6


@pytest.fixture(autouse=True)
def _quiet():
    """Small test vocabularies make transformers warn about the default token ids."""
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _adamw(params):
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=0.01, weight_decay=0.1)


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t + 1; -100 labels ignored."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )  # fmt: skip


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=4, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, use_cache=False,
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _gpt2_lora() -> nn.Module:
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0,
        fan_in_fan_out=True, init_lora_weights=False,  # nonzero B: adapters change outputs
    )  # fmt: skip
    return peft.get_peft_model(_gpt2(), config)


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=10, dropout=0.0,
    )  # fmt: skip


def _text_batches(classify: bool, seed: int = 1) -> list[tuple[dict, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=gen)
        mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
        mask[0, -2:] = 0  # a padded sequence in every batch
        mask[2, -1:] = 0
        if classify:
            labels = torch.randint(0, 3, (BATCH,), generator=gen)
        else:
            labels = ids.masked_fill(mask == 0, -100)
        batches.append(({"input_ids": ids, "attention_mask": mask}, labels))
    return batches


def _image_batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(BATCH, 3, 16, 16, generator=gen, dtype=torch.float64),
         torch.randint(0, 10, (BATCH,), generator=gen))
        for _ in range(3)
    ]  # fmt: skip


# name: (model, batches, loss, cuts)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], list], Callable, Any]] = {
    "bert": (_bert, lambda: _text_batches(True), nn.functional.cross_entropy, None),
    "gpt2": (_gpt2, lambda: _text_batches(False), _lm_loss, None),
    "vit": (
        _vit, _image_batches, nn.functional.cross_entropy,
        ("encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_3"),
    ),
    "gpt2-lora": (_gpt2_lora, lambda: _text_batches(False), _lm_loss, None),
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[name][0]().double()


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _reference(name: str) -> dict[str, torch.Tensor]:
    """Three AdamW steps of the unsplit model."""
    model = _model(name)
    _, batches, loss_fn, _ = CASES[name]
    optimizer = _adamw(model.parameters())
    model.train()
    for inputs, labels in batches():
        optimizer.zero_grad()
        loss_fn(logits_of(_call(model, inputs)), labels).backward()
        optimizer.step()
    return model.state_dict()


def _serve(body: nn.Module) -> tuple[HelperWorker, HelperServer]:
    worker = HelperWorker({"1": body}, _adamw)
    verifier = TokenVerifier(KEY, RUN, ROUND, HELPER, ["1"])
    return worker, HelperServer(worker, verifier, address="127.0.0.1:0").start()


def _train(name: str, own_loop: bool, micro_batches: int = 1) -> dict[str, torch.Tensor]:
    """The same three steps, split: head and tail here, the body on a helper over gRPC."""
    _, batches, loss_fn, cuts = CASES[name]
    model = _model(name)
    example = batches()[0][0]
    split = split_model(model, cuts, example)
    split.train()
    worker, server = _serve(split.body)
    try:
        with HelperClient(server.address, "1", TOKEN, deadline=60) as helper:
            if own_loop:
                with RemoteBody(helper, split.head, split.tail) as remote:
                    net = ClientModel(split.head, split.tail, remote)
                    optimizer = _adamw(net.parameters())
                    for inputs, labels in batches():  # the app's loop, unchanged
                        optimizer.zero_grad()
                        loss_fn(logits_of(_call(net, inputs)), labels).backward()
                        optimizer.step()
                    remote.finish()
            else:
                parameters = itertools.chain(split.head.parameters(), split.tail.parameters())
                train_split(
                    split.head, split.tail, helper, batches(), loss_fn, _adamw(parameters),
                    micro_batches=micro_batches,
                )  # fmt: skip
        assert server.wait_clients(10)
    finally:
        server.stop()
    return {
        **split.head.state_dict(),
        **worker.bodies["1"].module.state_dict(),
        **split.tail.state_dict(),
    }


@pytest.mark.parametrize(
    ("name", "own_loop", "micro_batches"),
    [
        ("bert", False, 1),
        ("gpt2", False, 1),
        ("vit", False, 1),
        ("gpt2-lora", False, 1),
        # micro-batches: the mean loss over examples is the mean of the micro-batches' (a
        # token mean over uneven padding would not be), so BERT steps exactly as unsplit
        ("bert", False, 2),
        ("bert", True, 1),
        ("gpt2-lora", True, 1),
    ],
)
def test_three_adamw_steps_over_the_data_plane_equal_the_unsplit_model(
    name: str, own_loop: bool, micro_batches: int
) -> None:
    reference = _reference(name)
    trained = _train(name, own_loop, micro_batches)
    assert trained.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=TOL, msg=key)
    # the steps moved the weights in every part: equality is not that of untrained models
    start = _model(name).state_dict()
    moved = [k for k, v in reference.items() if not torch.equal(v, start[k])]
    assert len(moved) >= len(reference) // 3


def test_lora_training_leaves_the_frozen_base_unchanged_bit_for_bit() -> None:
    start = _model("gpt2-lora")
    frozen = {k for k, p in start.named_parameters() if not p.requires_grad}
    adapters = {k for k, p in start.named_parameters() if p.requires_grad}
    assert frozen and adapters and all("lora_" in k for k in adapters)
    trained = _train("gpt2-lora", own_loop=False)
    initial = start.state_dict()
    for key in frozen:
        assert torch.equal(trained[key], initial[key]), key
    assert all(not torch.equal(trained[k], initial[k]) for k in adapters)


def test_the_split_copies_of_head_and_tail_keep_working_after_a_deep_copy() -> None:
    """A client deep-copies its split (``SplitTask.split``); head and tail still pair up."""
    _, batches, _, cuts = CASES["gpt2"]
    model = _model("gpt2").eval()
    inputs = batches()[0][0]
    split = copy.deepcopy(split_model(model, cuts, inputs)).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            split.forward(inputs).logits, model(**inputs).logits, rtol=0, atol=TOL
        )
