"""Tests for flsplit.model.blocks: transformers models split between their repeated blocks."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from flsplit.model.splitting import SplitModel, candidate_cuts, part_state_keys, split_model

transformers = pytest.importorskip("transformers")

TOL = 1e-6
VOCAB = 100


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """Small test vocabularies make transformers warn about the default token ids."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    yield
    logger.setLevel(level)


def _gpt2(dropout: float = 0.0, **extra: Any) -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=4, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64,
        use_cache=False, tie_word_embeddings=False, resid_pdrop=dropout,
        embd_pdrop=dropout, attn_pdrop=dropout, **extra,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _bert(dropout: float = 0.0) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _llama(dropout: float = 0.0) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=False, tie_word_embeddings=False, attention_dropout=dropout,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _inputs(name: str, batch: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    if name == "bert":
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, -3:] = 0  # padding
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids, "labels": ids}


MODELS: dict[str, Callable[..., nn.Module]] = {"gpt2": _gpt2, "bert": _bert, "llama": _llama}
BLOCKS = {"gpt2": "transformer.h", "bert": "bert.encoder.layer", "llama": "model.layers"}


def _loss(output: Any, name: str) -> torch.Tensor:
    if name == "bert":
        return nn.functional.cross_entropy(output.logits, torch.tensor([0, 2, 1]))
    return output.loss


def _forward(split: SplitModel, inputs: Any) -> tuple[Any, list]:
    """Part by part as a data plane runs it: hidden states detached and re-attached."""
    out = split.parts[0](inputs)
    links = []
    for part in split.parts[1:]:
        sent = out if isinstance(out, tuple) else (out,)
        received = tuple(t.detach().requires_grad_(t.requires_grad) for t in sent)
        links.append((sent, received))
        out = part(*received)
    return out, links


def _backward(loss: torch.Tensor, links: list) -> None:
    loss.backward()
    for sent, received in reversed(links):
        pairs = [(s, r.grad) for s, r in zip(sent, received, strict=True) if r.requires_grad]
        torch.autograd.backward([s for s, _ in pairs], [g for _, g in pairs])


@pytest.mark.parametrize(
    ("name", "cuts"), [("gpt2", None), ("bert", None), ("llama", None), ("bert", [0, 1, 2])]
)
def test_split_training_equals_the_unsplit_model(name: str, cuts: list[int] | None) -> None:
    torch.manual_seed(0)
    model = MODELS[name](dropout=0.1).double().train()
    inputs = _inputs(name)
    assert candidate_cuts(model, inputs) == [f"{BLOCKS[name]}.{k}" for k in (1, 2, 3)]
    full = copy.deepcopy(model)
    split = split_model(model, cuts, inputs)
    blocks = (1, 3) if cuts is None else (1, 2, 3)  # U-shape, or a chain of two bodies
    assert split.cuts == tuple(f"{BLOCKS[name]}.{k}" for k in blocks)
    opt_full = torch.optim.AdamW(full.parameters(), lr=1e-2)
    opt_split = [torch.optim.AdamW(p.parameters(), lr=1e-2) for p in split.parts]
    for step in range(3):
        batch = _inputs(name, seed=step)
        torch.manual_seed(10 + step)  # dropout draws the same masks in both runs
        expected = full(**batch)
        _loss(expected, name).backward()
        torch.manual_seed(10 + step)
        got, links = _forward(split, batch)
        _backward(_loss(got, name), links)
        assert type(got) is type(expected)
        torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=TOL)
        grads = {k: p.grad for part in split.parts for k, p in part.named_parameters()}
        assert grads.keys() == dict(full.named_parameters()).keys()
        for key, param in full.named_parameters():
            torch.testing.assert_close(grads[key], param.grad, rtol=0, atol=TOL, msg=key)
        opt_full.step()
        opt_full.zero_grad()
        for opt in opt_split:
            opt.step()
            opt.zero_grad()
    state = split.state_dict()
    for key, value in full.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=TOL, msg=key)
    # eval mode: dropout off in every part, as in model.eval()
    full.eval()
    split.eval()
    batch = _inputs(name, seed=7)
    with torch.no_grad():
        expected = full(**batch).logits
        torch.testing.assert_close(split.forward(batch).logits, expected, rtol=0, atol=TOL)
        torch.testing.assert_close(split.forward(batch).logits, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("name", list(MODELS))
def test_part_keys_partition_the_full_state_dict(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    inputs = _inputs(name)
    full_keys = list(model.state_dict())
    split = split_model(model, [0, 1, 2], inputs, share_weights=True)  # two bodies
    per_part = [split.part_keys(i) for i in range(4)]
    assert part_state_keys(model, [0, 1, 2], inputs) == per_part
    assert sorted(k for keys in per_part for k in keys) == sorted(full_keys)
    assert all(per_part), per_part
    blocks = BLOCKS[name]
    depth = len(blocks.split("."))
    assert {k.split(".")[depth] for k in per_part[1]} == {"1"}
    assert {k.split(".")[depth] for k in per_part[2]} == {"2"}
    assert all(k.startswith(f"{blocks}.3.") or not k.startswith(blocks) for k in per_part[3])
    ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert all(t.data_ptr() in ptrs for t in split.state_dict().values())
    with torch.no_grad():
        model.eval()
        split.eval()
        torch.testing.assert_close(
            split.forward(inputs).logits, model(**inputs).logits, rtol=0, atol=TOL
        )


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_tail_finds_the_inputs_of_micro_batches_in_any_order(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    split = split_model(model, None, _inputs(name)).eval()
    batches = [_inputs(name, batch=4, seed=s) for s in range(2)]
    with torch.no_grad():
        sent = [split.head(b) for b in batches]  # all heads first, as a pipeline does
        assert all(len(t) == 4 for s in sent for t in s)  # every crossing tensor batch-first
        # the data plane splits each crossing into micro-batches; they come back in any order
        halves = (slice(2, 4), slice(0, 2))
        chunks = [(i, tuple(t[h] for t in s)) for i, s in enumerate(sent) for h in halves]
        for i, chunk in reversed(chunks):
            rows = chunk[-1] & 0xFFFFFFFF
            got = split.tail(*split.body(*chunk)).logits
            expected = model(**{k: v[rows] for k, v in batches[i].items()}).logits
            torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
        with pytest.raises(RuntimeError, match="run the head"):
            split.tail(*split.body(*chunks[0][1]))  # answered already


def test_refusals_name_the_reason() -> None:
    inputs = _inputs("gpt2")
    with pytest.raises(ValueError, match="use_cache=False"):
        candidate_cuts(_cached_gpt2(), inputs)
    tied = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=VOCAB, use_cache=False)
    )
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        split_model(tied, None, inputs)
    with pytest.raises(ValueError, match=r"'transformer.h.9'.*valid cuts: \['transformer.h.1'"):
        split_model(_gpt2(), ["transformer.h.9"], inputs)
    with pytest.raises(ValueError, match=r"'transformer.h.0': the first block stays in the head"):
        split_model(_gpt2(), ["transformer.h.0"], inputs)
    with pytest.raises(ValueError, match="example input"):
        candidate_cuts(_gpt2())


def _cached_gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, use_cache=True, tie_word_embeddings=False
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_batches_with_and_without_padding_follow_an_example_without_it(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    padded = _inputs("bert")
    ones = torch.ones_like(padded["attention_mask"])
    plain = {"input_ids": padded["input_ids"], "attention_mask": ones}
    split = split_model(model, None, plain).eval()
    with torch.no_grad():
        for batch in (padded, plain, {"input_ids": padded["input_ids"]}):
            sent = split.head(batch)
            masks = [t for t in sent if t.dtype == torch.bool]
            assert masks[0].dim() == (4 if batch is padded else 2)  # (batch, 0): None
            got = split.tail(*split.body(*sent)).logits
            torch.testing.assert_close(got, model(**batch).logits, rtol=0, atol=TOL)


def test_a_task_with_mapping_inputs_splits_once_and_hands_out_copies() -> None:
    from flsplit.task import SplitTask

    torch.manual_seed(0)
    model = _gpt2().eval()
    task = SplitTask(
        model_fn=lambda cfg: copy.deepcopy(model),
        load_data=lambda p, n, cfg: ([], []),
        example_input=lambda cfg: _inputs("gpt2"),
    )
    config = task.config()
    first, second = task.split(config), task.split(config)
    assert first.cuts == ("transformer.h.1", "transformer.h.3")
    inbox = second.head._flsplit["inbox"]  # head and tail of one copy pair up, copies do not
    assert second.tail._flsplit["inbox"] is inbox is not first.head._flsplit["inbox"]
    batch = _inputs("gpt2", seed=3)
    with torch.no_grad():
        got = second.eval().forward(batch).logits
        torch.testing.assert_close(got, model(**batch).logits, rtol=0, atol=TOL)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.tanh(self.lin(h))


class _Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, its blocks can still be cut."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(_Residual() for _ in range(4))
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if h.sum() > 0:
            h = h * 2
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def test_a_model_fx_cannot_trace_is_split_at_its_blocks() -> None:
    torch.manual_seed(0)
    model = _Untraceable().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="cannot trace"):
        candidate_cuts(model)  # no example input: no way to run its blocks
    assert candidate_cuts(model, x) == ["blocks.1", "blocks.2", "blocks.3"]
    split = split_model(model, ["blocks.2"], x)
    assert split.part_keys(1) == [
        "blocks.2.lin.weight", "blocks.2.lin.bias", "blocks.3.lin.weight", "blocks.3.lin.bias",
        "out.weight", "out.bias",
    ]  # fmt: skip
    got, links = _forward(split, x)
    expected = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)
    _backward(got.sum(), links)
    expected.sum().backward()
    grads = {k: p.grad for part in split.parts for k, p in part.named_parameters()}
    for key, param in model.named_parameters():
        torch.testing.assert_close(grads[key], param.grad, rtol=0, atol=TOL, msg=key)


def test_profile_measures_every_block_of_a_transformers_model() -> None:
    from flsplit.model.profile import profile_model, validate_profile

    model = _gpt2()
    profile = profile_model(model, _inputs("gpt2", batch=2), repeats=1, warmup=0)
    validate_profile(profile)
    layers = profile["layers"]
    assert [layer["name"] for layer in layers] == ["transformer"] + [
        f"transformer.h.{k}" for k in (1, 2, 3)
    ]
    total = sum(p.numel() * 4 for p in model.parameters()) / 1024
    assert sum(layer["weights_kib"] for layer in layers) == pytest.approx(total, rel=1e-3)
    hidden, position_ids, tags = 2 * 7 * 32 * 4, 2 * 7 * 8, 2 * 8  # bytes, body to body
    kib = [layer["activation_kib"] for layer in layers]
    assert kib[1] == pytest.approx((hidden + position_ids + tags) / 1024, abs=1e-3)
    assert kib[2] == pytest.approx((hidden + tags) / 1024, abs=1e-3)  # to the tail
    assert profile["batch_size"] == 2


def test_chain_cuts_balance_the_blocks_of_a_transformers_model() -> None:
    from flsplit.model.chain_cuts import ChainSettings, chain_cut_names

    config = transformers.GPT2Config(
        n_layer=6, n_embd=32, n_head=2, vocab_size=VOCAB, use_cache=False,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    outer = ("transformer.h.1", "transformer.h.5")
    got = chain_cut_names(model, _inputs("gpt2"), outer, ChainSettings(length=2), batch_size=8)
    assert got == ("transformer.h.1", "transformer.h.3", "transformer.h.5")  # 2 + 2 blocks


def test_part_costs_measure_a_transformers_model_on_a_batch_of_the_training_size() -> None:
    from flsplit.model.costs import measure_part_costs

    costs = measure_part_costs(
        _gpt2(), _inputs("gpt2", batch=2), ("transformer.h.1", "transformer.h.3"), 5
    )
    assert costs.cut1_bytes == 5 * 7 * 32 * 4 + 5 * 7 * 8 + 5 * 8  # hidden, position ids, tags
    assert costs.body_fwd_ms > 0 and costs.tail_ms > 0


def test_a_lora_wrapped_model_is_split_at_its_blocks() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(_llama(), config).eval()
    inputs = _inputs("llama")
    split = split_model(model, None, inputs).eval()
    assert split.cuts == ("base_model.model.model.layers.1", "base_model.model.model.layers.3")
    trainable = {k for part in split.parts for k, p in part.named_parameters() if p.requires_grad}
    assert trainable == {k for k, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        torch.testing.assert_close(
            split.forward(inputs).logits, model(**inputs).logits, rtol=0, atol=TOL
        )
