"""Gantt chart of a round of planned helper chains: every hop, planned and measured.

The planned panel is the judged one-batch schedule (every helper's tasks, each client's
own compute and links as rows of their own); the measured panel is the round's helper
timelines. A task's colour is its hop (first, second, ... helper of the client's chain).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HOP_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def chain_round_gantt(entry: dict[str, Any], path: str | Path) -> Path:
    """Draw ``entry`` (a saved round of planned chains, ``round-N.json``) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = {str(c): [str(h) for h in r] for c, r in entry["chains"]["routes"].items()}

    def hop(client: str, helper: str) -> int:
        route = routes.get(client, [])
        return route.index(helper) if helper in route else 0

    planned = [
        (s["resource"] if s["resource"] not in ("client", "link")
         else f"{s['resource']} {s['client']}", str(s["client"]), s["start"], s["end"])
        for s in entry["predicted_stages"]
    ]
    measured = [(str(t["helper"]), str(t["client"]), t["start"], t["end"], t["kind"])
                for t in entry["measured_tasks"]]
    helpers = sorted({h for r in routes.values() for h in r})
    rows_planned = helpers + sorted({r for r, *_ in planned if r not in helpers})
    fig, axes = plt.subplots(
        2, 1, figsize=(11, 1.5 + 0.3 * (len(rows_planned) + len(helpers))),
        gridspec_kw={"height_ratios": [max(len(rows_planned), 1), max(len(helpers), 1)]},
    )
    row = {r: i for i, r in enumerate(rows_planned)}
    for resource, client, start, end in planned:
        color = HOP_COLORS[hop(client, resource) % len(HOP_COLORS)] if resource in helpers \
            else "tab:gray"
        axes[0].barh(row[resource], end - start, left=start, color=color, height=0.6)
    axes[0].set_yticks(range(len(rows_planned)),
                       [f"helper {r}" if r in helpers else r for r in rows_planned])
    axes[0].set_title(f"round {entry['round']}: planned, one batch "
                      f"({entry['chains']['one_batch_ms']:.0f} ms; round predicted "
                      f"{entry['predicted_ms']:.0f} ms)")
    row = {h: i for i, h in enumerate(helpers)}
    for helper, client, start, end, kind in measured:
        if helper in row:
            axes[1].barh(row[helper], end - start, left=start, height=0.6,
                         color=HOP_COLORS[hop(client, helper) % len(HOP_COLORS)],
                         hatch="//" if kind == "bwd" else None)
    axes[1].set_yticks(range(len(helpers)), [f"helper {h}" for h in helpers])
    measured_ms = entry.get("measured_ms") or 0.0
    axes[1].set_title(f"measured round ({measured_ms:.0f} ms; hatched: backward)")
    axes[1].set_xlabel("ms since the round started (colour: hop 1, 2, ... of the client's "
                       "chain; grey: a client's own compute and links)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
