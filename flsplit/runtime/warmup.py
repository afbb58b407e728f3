"""Pay a process's one-off torch costs before a round's clock starts.

A process's first ``torch.optim`` optimizer imports torch's compiler stack
(``torch._dynamo``: about 900 modules, a second of CPU on an idle core, many more when a
simulation starts 24 nodes on 2 cores at once). flsplit's own loop builds its optimizer
before a round's clock starts, but an app's own training function builds it inside its
round, so that cost landed in the first round's first batch, ahead of every client's first
forward. A node pays it once at discovery (:func:`warm_up`), and a client again before its
round's clock starts if its process has not yet (a later process of the same node).
"""

from __future__ import annotations

import torch

_done = False


def warm_up() -> None:
    """Build a throwaway optimizer once per process (later calls do nothing)."""
    global _done
    if _done:
        return
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    _done = True


def warmed_up() -> bool:
    """Whether this process has paid its first optimizer's imports through :func:`warm_up`."""
    return _done
