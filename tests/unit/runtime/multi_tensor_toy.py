"""A toy three-part model whose two cuts each carry three tensors: a hidden state that needs
a gradient, a bool mask and a float table computed without parameters (no gradient), like a
transformer's hidden states, attention mask and rotary table. The head takes named inputs;
the tail returns an object with ``.logits`` (token logits ``[B, T, V]``)."""

from dataclasses import dataclass

import torch
from torch import nn

from flsplit.model.splitting import SplitModel

VOCAB, WIDTH, SEQ, KEPT = 11, 6, 5, 3  # every example has KEPT of SEQ positions unmasked


@dataclass
class Output:
    """What the tail returns (as a ``transformers`` ``ModelOutput`` would)."""

    logits: torch.Tensor


def _positions(seq: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A sinusoidal table ``[1, seq, width]``: a float crossing without parameters."""
    pos = torch.arange(seq, dtype=dtype)[:, None] * torch.arange(1, width + 1, dtype=dtype)
    return torch.sin(pos / width)[None]


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)

    def forward(self, inputs):
        hidden = self.embed(inputs["ids"])
        table = _positions(hidden.shape[1], WIDTH, hidden.dtype)
        return hidden, inputs["mask"], table


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(WIDTH, WIDTH)

    def forward(self, hidden, mask, table):
        out = torch.tanh(self.mix(hidden + table)) * mask[..., None].to(hidden.dtype)
        return out + hidden, mask, table * 2


class Tail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(WIDTH, VOCAB)

    def forward(self, hidden, mask, table):
        return Output(self.out(hidden * (1 + table)))


class Full(nn.Module):
    """The unsplit model: the same three modules in sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.body, self.tail = Head(), Body(), Tail()

    def forward(self, ids, mask):
        return self.tail(*self.body(*self.head({"ids": ids, "mask": mask})))


def model() -> Full:
    torch.manual_seed(0)
    return Full().double()


def split(full: Full) -> SplitModel:
    """The split of (a copy of) ``full`` at its three modules."""
    head, body, tail = (
        Head().double(), Body().double(), Tail().double()
    )
    head.load_state_dict(full.head.state_dict())
    body.load_state_dict(full.body.state_dict())
    tail.load_state_dict(full.tail.state_dict())
    return SplitModel(cuts=("body", "tail"), parts=[head, body, tail])


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens (masked ones are -100)."""
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))


def batches(n: int = 3, size: int = 6, seed: int = 1):
    """``n`` batches of named inputs (int64 ids, bool mask with KEPT positions per row)
    and token labels (-100 where masked)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (size, SEQ), generator=gen)
        order = torch.rand(size, SEQ, generator=gen).argsort(dim=1)
        mask = order < KEPT
        labels = torch.randint(0, VOCAB, (size, SEQ), generator=gen)
        labels[~mask] = -100
        out.append(({"ids": ids, "mask": mask}, labels))
    return out


def parts_state(full: Full) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "head": full.head.state_dict(),
        "body": full.body.state_dict(),
        "tail": full.tail.state_dict(),
    }
