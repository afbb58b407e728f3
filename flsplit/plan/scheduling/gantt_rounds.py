"""Gantt chart of a round: the planned helper timeline above the measured one."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def planned_vs_measured(entry: dict[str, Any], path: str | Path) -> Path:
    """Draw ``entry`` (a saved round: predicted and measured helper tasks) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    node_ids = entry["node_ids"]
    helpers = sorted(
        {node_ids[t["helper"]] for t in entry["predicted_tasks"]}
        | {t["helper"] for t in entry["measured_tasks"]}
    )
    row = {h: i for i, h in enumerate(helpers)}
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.2 + 0.6 * len(helpers) * 2), sharex=True)
    panels = (
        (
            "planned",
            [
                (node_ids[t["helper"]], node_ids[t["client"]], t["kind"], t["start"], t["end"])
                for t in entry["predicted_tasks"]
            ],
        ),
        (
            "measured",
            [
                (t["helper"], t["client"], t["kind"], t["start"], t["end"])
                for t in entry["measured_tasks"]
            ],
        ),
    )
    colors = {"fwd": "tab:blue", "bwd": "tab:orange"}
    for axis, (title, tasks) in zip(axes, panels, strict=True):
        for helper, _client, kind, start, end in tasks:
            axis.barh(row[helper], end - start, left=start, color=colors[kind], height=0.6)
        axis.set_yticks(range(len(helpers)), [f"helper {h}" for h in helpers])
        axis.set_title(
            f"round {entry['round']}: {title} "
            f"({entry['predicted_ms' if title == 'planned' else 'measured_ms']:.0f} ms)"
        )
    axes[-1].set_xlabel("ms since the round started (blue: forward, orange: backward)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
