"""A helper's steady-state task times from the timeline it reports.

What the planner learns from a round must be what every later round repeats. A helper's
first task of each kind for a client pays one-off costs (in the helper process's first
round its imports and first operator calls, in every round the client's body copy and
optimizer being set up), so each client's first task of each kind is left out when the
client has more than one; the others are its steady state. The tasks' spans are the
helper's compute only (its queue wait is not in them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol


class Span(Protocol):
    """One task a helper ran (:class:`~flsplit.protocol.TaskSpan`): wall-clock seconds."""

    client: str
    kind: str
    start: float
    end: float


def _steady(spans: Iterable[Span]) -> dict[tuple[str, str], tuple[float, int]]:
    """(client, kind) -> (steady mean ms of its tasks, how many it ran)."""
    groups: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for span in spans:
        groups[(str(span.client), span.kind)].append(span)
    out = {}
    for key, tasks in groups.items():
        tasks.sort(key=lambda t: t.start)
        kept = tasks[1:] if len(tasks) > 1 else tasks
        mean = 1000.0 * sum(t.end - t.start for t in kept) / len(kept)
        out[key] = (mean, len(tasks))
    return out


def steady_kind_ms(spans: Iterable[Span]) -> dict[str, float]:
    """Mean ms of a task per kind (``fwd``, ``bwd``), each client's first task of the kind
    left out when the client ran more than one of it."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for (_, kind), (mean, n) in _steady(spans).items():
        kept = n - 1 if n > 1 else 1
        total[kind] += mean * kept
        count[kind] += kept
    return {kind: total[kind] / count[kind] for kind in total}


def steady_busy_ms(spans: Iterable[Span]) -> dict[int, float]:
    """Client -> the helper's busy time for it this round (ms), each task counted at the
    steady mean of its client and kind: what the round's tasks would have taken without
    the first one's one-off costs."""
    busy: dict[int, float] = defaultdict(float)
    for (client, _), (mean, n) in _steady(spans).items():
        busy[int(client)] += mean * n
    return dict(busy)
