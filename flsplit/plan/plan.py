"""Plans: which helper serves which client and in what order each helper works.

A plan is what every solver returns and what the evaluator executes. This module holds
the :class:`Plan` dataclass, its JSON format and the feasibility check shared by the
evaluator and the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flsplit.plan.instance import Instance, InstanceError

PLAN_FORMAT = "flsplit-plan"
PLAN_VERSION = 1
FWD = "fwd"
BWD = "bwd"

Task = tuple[str, str]


class PlanError(InstanceError):
    """A plan does not fit its instance; ``field`` names the offending part."""


@dataclass
class Plan:
    """A complete plan for one round.

    Parameters
    ----------
    assignment
        Client id -> helper id.
    order
        Helper id -> ordered list of ``(client id, "fwd" | "bwd")`` tasks.
    makespan
        Round makespan in ms as computed by :func:`flsplit.plan.evaluate`.
    lower_bound
        A proven lower bound on the optimal makespan (ms), or ``None``.
    solve_time
        Wall-clock seconds the solver used.
    method
        Name of the solver that produced the plan.
    proven_optimal
        ``True`` when ``makespan`` equals a proven lower bound.
    info
        Solver-specific details (e.g. which sub-method won inside ``auto``).
    """

    assignment: dict[str, str]
    order: dict[str, list[Task]]
    makespan: float = float("nan")
    lower_bound: float | None = None
    solve_time: float = 0.0
    method: str = ""
    proven_optimal: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gap(self) -> float | None:
        """Relative gap ``(makespan - lower_bound) / makespan``, or ``None``."""
        if self.lower_bound is None or not self.makespan:
            return None
        return max(0.0, (self.makespan - self.lower_bound) / self.makespan)

    def clients_per_helper(self) -> dict[str, int]:
        """Number of clients each helper serves (helpers in ``order``)."""
        counts = dict.fromkeys(self.order, 0)
        for helper in self.assignment.values():
            counts[helper] = counts.get(helper, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dictionary (see ``docs/planner.md``)."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "method": self.method,
            "makespan": self.makespan,
            "lower_bound": self.lower_bound,
            "gap": self.gap,
            "proven_optimal": self.proven_optimal,
            "solve_time_s": self.solve_time,
            "assignment": dict(self.assignment),
            "order": {h: [[c, kind] for c, kind in tasks] for h, tasks in self.order.items()},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """Build a plan from its JSON dictionary (structure only; see :func:`check_plan`)."""
        if not isinstance(data, dict):
            raise PlanError("<root>", "expected a JSON object")
        if data.get("version") != PLAN_VERSION:
            raise PlanError("version", f"unsupported version {data.get('version')!r}")
        for key in ("assignment", "order"):
            if not isinstance(data.get(key), dict):
                raise PlanError(key, "missing or not an object")
        order: dict[str, list[Task]] = {}
        for helper, tasks in data["order"].items():
            if not isinstance(tasks, list):
                raise PlanError(f"order.{helper}", "expected a list of [client, kind]")
            order[str(helper)] = []
            for i, task in enumerate(tasks):
                if not (isinstance(task, list | tuple) and len(task) == 2):
                    raise PlanError(f"order.{helper}[{i}]", "expected [client, kind]")
                order[str(helper)].append((str(task[0]), str(task[1])))
        lower = data.get("lower_bound")
        return cls(
            assignment={str(c): str(h) for c, h in data["assignment"].items()},
            order=order,
            makespan=float(data.get("makespan", float("nan"))),
            lower_bound=None if lower is None else float(lower),
            solve_time=float(data.get("solve_time_s", 0.0)),
            method=str(data.get("method", "")),
            proven_optimal=bool(data.get("proven_optimal", False)),
            info=dict(data.get("info") or {}),
        )


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write ``plan`` as JSON."""
    Path(path).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON file."""
    return Plan.from_dict(json.loads(Path(path).read_text()))


def check_plan(instance: Instance, plan: Plan) -> None:
    """Raise :class:`PlanError` unless ``plan`` is feasible for ``instance``.

    Feasible means: every client is assigned exactly once to a known helper, helper
    memory is respected, and each helper's list holds the forward and the backward task of
    exactly its clients, each once, forward before backward.
    """
    clients = set(instance.client_ids)
    helper_index = {h: j for j, h in enumerate(instance.helper_ids)}
    client_index = {c: k for k, c in enumerate(instance.client_ids)}
    missing = clients - set(plan.assignment)
    if missing:
        raise PlanError(f"assignment.{sorted(missing)[0]}", "client not assigned")
    for client, helper in plan.assignment.items():
        if client not in clients:
            raise PlanError(f"assignment.{client}", "unknown client")
        if helper not in helper_index:
            raise PlanError(f"assignment.{client}", f"unknown helper {helper!r}")
    used = np.zeros(instance.num_helpers)
    for client, helper in plan.assignment.items():
        used[helper_index[helper]] += instance.body_memory[client_index[client]]
    over = used > instance.helper_memory + 1e-9
    if over.any():
        j = int(np.argmax(over))
        raise PlanError(
            f"assignment->{instance.helper_ids[j]}",
            f"memory {used[j]:g} MiB exceeds capacity {instance.helper_memory[j]:g} MiB",
        )
    for helper in plan.order:
        if helper not in helper_index:
            raise PlanError(f"order.{helper}", "unknown helper")
    for helper in instance.helper_ids:
        tasks = plan.order.get(helper, [])
        served = {c for c, h in plan.assignment.items() if h == helper}
        seen: set[Task] = set()
        for i, (client, kind) in enumerate(tasks):
            where = f"order.{helper}[{i}]"
            if kind not in (FWD, BWD):
                raise PlanError(where, f"kind {kind!r} is not 'fwd' or 'bwd'")
            if client not in served:
                raise PlanError(where, f"client {client!r} is not assigned to {helper!r}")
            if (client, kind) in seen:
                raise PlanError(where, f"task {client!r}/{kind} appears twice")
            if kind == BWD and (client, FWD) not in seen:
                raise PlanError(where, f"backward of {client!r} before its forward")
            seen.add((client, kind))
        if len(seen) != 2 * len(served):
            absent = sorted(c for c in served if (c, BWD) not in seen)
            raise PlanError(f"order.{helper}", f"tasks of client {absent[0]!r} missing")
