"""The example's text: a small synthetic English, generated offline, and its tokenizer.

No corpus or tokenizer can be downloaded here, so the text comes from a seeded
probabilistic grammar over 40 words. It has what a language model can learn and a
random guess cannot: word order (determiner, adjectives, noun, verb, object), number
agreement between a subject and its verb across an optional prepositional phrase
("the dogs near the cat *chase* ..."), verbs that take an object or not, and sentence
ends. Its per-token entropy is well below the ``log(vocabulary)`` of an untrained model,
so the loss falls within a few rounds.

Each client draws its own sentences (its partition's seed). With ``data-alpha > 0``
every client also prefers some nouns to others (Dirichlet weights of that
concentration), a non-IID split by topic; ``data-alpha = 0`` (default) is IID.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
#: labels the loss ignores (padding, and the position after the last token)
IGNORE = -100

# (singular, plural) pairs: the grammar's number agreement
NOUNS = (("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("fox", "foxes"),
         ("child", "children"), ("robot", "robots"))
TRANSITIVE = (("sees", "see"), ("chases", "chase"), ("likes", "like"), ("follows", "follow"))
INTRANSITIVE = (("sleeps", "sleep"), ("runs", "run"), ("sings", "sing"))
ADJECTIVES = ("big", "small", "red", "quick", "lazy")
PREPOSITIONS = ("near", "behind")
OTHER = ("the", "a", "two", "and", ".")


class WordTokenizer:
    """Word-level tokenizer over the grammar's words (ids 0-2: pad, begin, end)."""

    def __init__(self) -> None:
        words = [w for pair in NOUNS + TRANSITIVE + INTRANSITIVE for w in pair]
        self.vocab = [PAD, BOS, EOS, *words, *ADJECTIVES, *PREPOSITIONS, *OTHER]
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``'s words (space-separated), between begin and end."""
        return [self.bos_id, *(self.ids[w] for w in text.split()), self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids``, padding and begin/end left out."""
        return " ".join(self.vocab[i] for i in ids if i > self.eos_id)


TOKENIZER = WordTokenizer()


class Grammar:
    """A seeded probabilistic grammar; ``noun_weights`` skews which nouns it uses."""

    def __init__(self, seed: int, noun_weights: Sequence[float] | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        weights = np.ones(len(NOUNS)) if noun_weights is None else np.asarray(noun_weights)
        self.noun_p = weights / weights.sum()

    def _noun_phrase(self, depth: int = 0) -> tuple[list[str], int]:
        """Words of a noun phrase and its number (0 singular, 1 plural)."""
        plural = int(self.rng.random() < 0.4)
        det = "two" if plural and self.rng.random() < 0.3 else (
            "a" if not plural and self.rng.random() < 0.4 else "the")
        words = [det]
        if self.rng.random() < 0.35:
            words.append(ADJECTIVES[self.rng.integers(len(ADJECTIVES))])
        words.append(NOUNS[self.rng.choice(len(NOUNS), p=self.noun_p)][plural])
        if depth == 0 and self.rng.random() < 0.25:  # the verb agrees across this phrase
            inner, _ = self._noun_phrase(depth + 1)
            words += [PREPOSITIONS[self.rng.integers(len(PREPOSITIONS))], *inner]
        return words, plural

    def sentence(self) -> str:
        """One sentence: subject, verb in agreement, an object for a transitive verb."""
        subject, plural = self._noun_phrase()
        if self.rng.random() < 0.65:
            verb = TRANSITIVE[self.rng.integers(len(TRANSITIVE))][plural]
            obj, _ = self._noun_phrase(depth=1)
            words = [*subject, verb, *obj]
        else:
            words = [*subject, INTRANSITIVE[self.rng.integers(len(INTRANSITIVE))][plural]]
        if self.rng.random() < 0.2:  # a second clause joined by "and"
            second, plural2 = self._noun_phrase(depth=1)
            words += ["and", *second, INTRANSITIVE[self.rng.integers(len(INTRANSITIVE))][plural2]]
        return " ".join([*words, "."])

    def text(self, max_tokens: int) -> str:
        """One to three sentences that fit ``max_tokens`` tokens with begin and end."""
        sentences = [self.sentence()]
        for _ in range(int(self.rng.integers(0, 3))):
            longer = [*sentences, self.sentence()]
            if len(" ".join(longer).split()) + 2 > max_tokens:
                break
            sentences = longer
        return " ".join(sentences)


class TextDataset(Dataset):
    """Padded sequences as dicts ``{"input_ids", "attention_mask", "labels"}``.

    Labels are the inputs shifted by one (``labels[t] = input_ids[t + 1]``): the model's
    output at position ``t`` predicts ``labels[t]``, so the loss needs no shift. Padding
    and the last position are ``-100``; the attention mask is 0 on padding.

    Every sequence ends in at least one padding token (texts are cut to ``seq_len - 1``
    tokens), so every batch's attention mask has zeros, as the example input's does
    (:func:`llm.model.example_input`): the model's blocks get a mask in every batch.
    """

    def __init__(self, texts: Sequence[str], seq_len: int) -> None:
        n = len(texts)
        self.input_ids = torch.full((n, seq_len), TOKENIZER.pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
        self.labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = torch.tensor(TOKENIZER.encode(text)[: seq_len - 1])
            self.input_ids[i, : len(ids)] = ids
            self.attention_mask[i, : len(ids)] = 1
            self.labels[i, : len(ids) - 1] = ids[1:]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


def texts(seed: int, count: int, seq_len: int, alpha: float = 0.0) -> list[str]:
    """``count`` texts of the grammar seeded with ``seed`` (nouns skewed for ``alpha > 0``)."""
    weights = None
    if alpha > 0:
        weights = np.random.default_rng(10_000 + seed).dirichlet([alpha] * len(NOUNS))
    grammar = Grammar(seed, weights)
    return [grammar.text(seq_len - 1) for _ in range(count)]  # room for one pad


def partition(
    partition_id: int, seq_len: int, train: int, val: int, batch_size: int, alpha: float = 0.0
) -> tuple[DataLoader, DataLoader]:
    """One client's train and validation loaders: its own sentences, seeded by its id."""
    drawn = texts(1 + partition_id, train + val, seq_len, alpha)
    return (
        DataLoader(TextDataset(drawn[:train], seq_len), batch_size=batch_size, shuffle=True,
                   generator=torch.Generator().manual_seed(partition_id)),
        DataLoader(TextDataset(drawn[train:], seq_len), batch_size=batch_size),
    )


def test_set(seq_len: int, count: int, batch_size: int) -> DataLoader:
    """The server's held-out text (its own seed, IID)."""
    return DataLoader(TextDataset(texts(0, count, seq_len), seq_len), batch_size=batch_size)
