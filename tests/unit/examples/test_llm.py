"""examples/llm without the simulation engine: its text and tokenizer, the LoRA GPT-2 as
peft wraps it, the adapters' share of the model's bytes, and the unsplit model learning."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from tests.paths import ROOT

LLM = ROOT / "examples" / "llm"
if str(LLM) not in sys.path:
    sys.path.insert(0, str(LLM))

from llm.data import IGNORE, NOUNS, TOKENIZER, TextDataset, partition, texts  # noqa: E402
from llm.figures import adapter_figures  # noqa: E402
from llm.model import BLOCKS, default_cuts, example_input, model_fn  # noqa: E402
from llm.settings import APP_DEFAULTS  # noqa: E402
from llm.task import TASK, loss_fn, optimizer_fn  # noqa: E402

from flsplit.task import evaluate_model, train_full  # noqa: E402


@pytest.fixture
def one_thread():
    # A model this small trains fastest on one thread, and far slower on two when the
    # machine's cores are busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = {**APP_DEFAULTS, "train-examples": 48, "val-examples": 16, "batch-size": 16, "lr": 0.005}


def test_the_tokenizer_reads_back_what_it_wrote():
    text = texts(3, 1, 32)[0]
    ids = TOKENIZER.encode(text)
    assert ids[0] == TOKENIZER.bos_id and ids[-1] == TOKENIZER.eos_id
    assert TOKENIZER.decode(ids) == text


def test_labels_are_the_next_tokens_and_padding_is_masked_and_ignored():
    data = TextDataset(["the cat sleeps .", "two dogs run . a fox sings ."], seq_len=12)
    first = data[0]
    n = 4 + 2  # four words, begin and end
    assert first["attention_mask"].tolist() == [1] * n + [0] * (12 - n)
    assert first["labels"][: n - 1].tolist() == first["input_ids"][1:n].tolist()
    assert (first["labels"][n - 1 :] == IGNORE).all()  # last token and padding
    assert (first["input_ids"][n:] == TOKENIZER.pad_id).all()


def test_every_sequence_ends_in_padding_as_the_example_input_does():
    cut = TextDataset(["the cat sees the dog and the bird sleeps ."], seq_len=8)[0]
    assert cut["attention_mask"].tolist() == [1] * 7 + [0]
    train, _ = partition(0, 32, 64, 0, batch_size=16)
    assert (train.dataset.attention_mask[:, -1] == 0).all()
    assert (example_input(APP_DEFAULTS)["attention_mask"] == 0).any(dim=1).all()


def test_each_client_draws_its_own_text_the_same_every_time():
    a, _ = partition(0, 32, 8, 4, batch_size=4)
    again, _ = partition(0, 32, 8, 4, batch_size=4)
    b, _ = partition(1, 32, 8, 4, batch_size=4)
    assert torch.equal(a.dataset.input_ids, again.dataset.input_ids)
    assert not torch.equal(a.dataset.input_ids, b.dataset.input_ids)


def test_data_alpha_makes_the_clients_prefer_different_nouns():
    def nouns(seed: int, alpha: float) -> Counter:
        words = " ".join(texts(seed, 300, 32, alpha)).split()
        return Counter(w for w in words for pair in NOUNS if w in pair)

    def spread(counts: Counter) -> float:
        shares = [c / sum(counts.values()) for c in counts.values()]
        return max(shares) - min(shares)

    assert spread(nouns(1, 0.0)) < 0.1  # IID: every noun about as often
    assert spread(nouns(1, 0.3)) > 0.3  # skewed: some nouns dominate


def test_peft_wraps_the_gpt2_its_blocks_are_named_and_only_adapters_train():
    model = model_fn(APP_DEFAULTS)
    modules = dict(model.named_modules())
    assert type(model).__name__ == "PeftModel"
    assert [f"{BLOCKS}.{i}" in modules for i in range(7)] == [True] * 6 + [False]
    assert all(name in modules for name in default_cuts(APP_DEFAULTS).split(","))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    for i in range(6):  # every block adapted, on attention and MLP projections
        adapted = {n.split(".lora_")[0] for n in trainable if n.startswith(f"{BLOCKS}.{i}.")}
        assert adapted == {f"{BLOCKS}.{i}.{m}" for m in
                           ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    output = model(**example_input(APP_DEFAULTS))
    assert output.logits.shape == (2, APP_DEFAULTS["seq-len"], len(TOKENIZER))


def test_the_loss_on_pre_shifted_labels_is_the_models_own_causal_loss():
    model = model_fn(APP_DEFAULTS)
    (inputs, labels), *_ = TASK.batches(partition(0, 32, 8, 0, batch_size=8)[0])
    unshifted = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE)
    with torch.no_grad():
        output = model(**inputs, labels=unshifted)  # transformers shifts the labels inside
    assert float(loss_fn(output.logits, labels)) == pytest.approx(float(output.loss), rel=1e-5)


def test_the_adapters_are_at_most_five_percent_of_the_models_bytes():
    figures = adapter_figures(APP_DEFAULTS)
    print(f"\nadapters {figures['adapter_bytes']} B of {figures['full_model_bytes']} B "
          f"({100 * figures['adapter_share']:.2f}%): client {figures['client_adapter_bytes']} B, "
          f"body {figures['body_adapter_bytes']} B")
    assert figures["adapter_share"] <= 0.05
    assert figures["client_adapter_bytes"] + figures["body_adapter_bytes"] == figures[
        "adapter_bytes"]
    # two of the six blocks' adapters on the client (first and last), four on the helper
    assert figures["body_adapter_bytes"] == 2 * figures["client_adapter_bytes"]


def test_the_unsplit_model_learns_the_text_in_three_epochs_and_the_base_stays_frozen(
    one_thread,
):
    torch.manual_seed(0)
    model = model_fn(SMALL)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train, val = TASK.load_data(0, 1, SMALL)
    optimizer = optimizer_fn(model.parameters(), SMALL)
    before, acc_before, _ = evaluate_model(model, TASK.batches(val), loss_fn)
    losses = [train_full(model, TASK.batches(train), loss_fn, optimizer)[0] for _ in range(3)]
    after, acc_after, _ = evaluate_model(model, TASK.batches(val), loss_fn)
    print(f"\nunsplit: train loss per epoch {[round(x, 3) for x in losses]}, "
          f"validation {before:.3f} -> {after:.3f}, accuracy {acc_before:.3f} -> "
          f"{acc_after:.3f}")
    assert losses[0] > losses[1] > losses[2]
    assert after < before - 0.3
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
