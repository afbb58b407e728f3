"""The example's model: a small GPT-2 built from its config, with LoRA adapters.

Nothing can be downloaded, so the base model is GPT-2's architecture at a small size with
random weights (seeded, so every node builds the same ones), not a pretrained checkpoint:
the example shows how split learning fine-tunes adapters of a frozen transformer, not
what a pretrained one would learn. ``peft`` puts LoRA adapters on every block's attention
and MLP projections (``c_attn``, ``c_proj``, ``c_fc``) and freezes everything else.

The model is the ``PeftModel``: its modules are named under ``base_model.model.``
(blocks ``base_model.model.transformer.h.0`` .. ``h.5``), its state dict holds the frozen
weights (``...c_attn.base_layer.weight``) and the adapters (``...c_attn.lora_A.default.weight``),
and ``model(input_ids=..., attention_mask=...)`` returns a ``ModelOutput`` with ``.logits``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from llm.data import TOKENIZER
from llm.settings import setting

#: where the blocks are in the PeftModel
BLOCKS = "base_model.model.transformer.h"
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")


def gpt2_config(config: Mapping[str, Any]) -> GPT2Config:
    """GPT-2's architecture at the run config's size, over the example's vocabulary."""
    return GPT2Config(
        vocab_size=len(TOKENIZER),
        n_positions=int(setting(config, "seq-len")),
        n_embd=int(setting(config, "n-embd")),
        n_layer=int(setting(config, "n-layer")),
        n_head=int(setting(config, "n-head")),
        bos_token_id=TOKENIZER.bos_id,
        eos_token_id=TOKENIZER.eos_id,
        pad_token_id=TOKENIZER.pad_id,
        use_cache=False,  # training only: no key/value cache crossing the cuts
        tie_word_embeddings=False,  # the LM head is its own module, on the client's tail
        # dropout off: a seeded run gives the same losses split and unsplit
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )


def model_fn(config: Mapping[str, Any]) -> nn.Module:
    """The frozen random GPT-2 with LoRA adapters of rank ``lora-rank`` (seeded by ``seed``)."""
    torch.manual_seed(int(setting(config, "seed")))
    base = GPT2LMHeadModel(gpt2_config(config))
    rank = int(setting(config, "lora-rank"))
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(LORA_TARGETS),
        lora_dropout=0.0,
        fan_in_fan_out=True,  # GPT-2's projections are Conv1D (weights stored transposed)
        init_lora_weights=True,  # B = 0: the adapted model starts as the base model
    )
    with warnings.catch_warnings():
        # peft asks transformers 5 for is_gradient_checkpointing, which it deprecates
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(base, lora)


def default_cuts(config: Mapping[str, Any]) -> str:
    """Cuts before the second and the last block: the device keeps the embeddings, the
    first block, the last block and the LM head; helpers run the blocks between."""
    layers = int(setting(config, "n-layer"))
    return f"{BLOCKS}.1,{BLOCKS}.{layers - 1}"


def example_input(config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One batch of named inputs like the loaders' (token values do not matter): its
    attention mask is 0 on padding, as every batch's is (:class:`llm.data.TextDataset`)."""
    seq_len = int(setting(config, "seq-len"))
    mask = torch.ones((2, seq_len), dtype=torch.long)
    mask[:, -1] = 0
    mask[1, seq_len // 2 :] = 0
    return {
        "input_ids": torch.full((2, seq_len), TOKENIZER.bos_id, dtype=torch.long) * mask,
        "attention_mask": mask,
    }


def parameter_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters: all (frozen + trainable) and trainable only."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"full": total, "trainable": trainable}
