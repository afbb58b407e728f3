"""Gantt chart (PNG) of an evaluator timeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flsplit.plan.evaluator import Span

STAGE_COLOURS: dict[str, str] = {
    "head_fwd_up": "#9ecae1",
    "fwd": "#3182bd",
    "tail_fwd_bwd": "#fdae6b",
    "bwd": "#e6550d",
    "down_head_bwd": "#a1d99b",
}


def gantt(timeline: Sequence[Span], path: str | Path, title: str = "") -> None:
    """Draw helpers (top) and clients (bottom) as rows of coloured stage bars.

    Parameters
    ----------
    timeline
        Spans from :func:`flsplit.plan.evaluate`.
    path
        Output PNG file.
    title
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    helpers = list(dict.fromkeys(s.resource for s in timeline if s.stage in ("fwd", "bwd")))
    clients = list(dict.fromkeys(s.resource for s in timeline
                                 if s.stage not in ("fwd", "bwd")))
    rows = helpers + clients
    row_of = {name: i for i, name in enumerate(rows)}
    height = min(40.0, 1.5 + 0.25 * len(rows))
    fig, ax = plt.subplots(figsize=(12, height))
    for span in timeline:
        y = row_of[span.resource]
        ax.barh(y, span.end - span.start, left=span.start, height=0.8,
                color=STAGE_COLOURS[span.stage], edgecolor="black", linewidth=0.2)
        if span.stage in ("fwd", "bwd") and len(helpers) <= 20:
            ax.text(span.start + (span.end - span.start) / 2, y, span.client, ha="center",
                    va="center", fontsize=5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=max(3, min(8, 400 // max(1, len(rows)))))
    ax.invert_yaxis()
    if helpers and clients:
        ax.axhline(len(helpers) - 0.5, color="grey", linewidth=0.8)
    ax.set_xlabel("time (ms)")
    ax.set_title(title or "flsplit plan")
    ax.legend(handles=[Patch(color=c, label=s) for s, c in STAGE_COLOURS.items()],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
