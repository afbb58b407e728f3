"""NODES.json: the clients and helpers of a round, their devices, memory and link rates.

Format (version 1; see ``docs/cuts.md``)::

    {
      "format": "flsplit-nodes", "version": 1,
      "reference": "vm-8vcpu",
      "default_rate_mbps": 10.0,
      "clients": [
        {"id": "c0", "device": "rpi4", "memory_mib": 4096, "rate_mbps": 8.0},
        {"id": "c1", "device": "jetson-gpu", "rates_mbps": {"h0": 18.0, "h1": 3.0}}
      ],
      "helpers": [
        {"id": "h0", "device": "vm-8vcpu", "memory_mib": 16384},
        {"id": "h1", "device": "laptop", "link_mbps": 40.0}
      ],
      "rates_mbps": {"c0": {"h1": 2.5}},
      "cuts": [[3, 33], [5, 30]]
    }

``device`` is a column of the model profile or a preset of :mod:`flsplit.model.presets`
(scaled from the ``reference`` column); ``memory_mib`` defaults to the preset's size. The
rate of a pair is the first given of ``rates_mbps[client][helper]``, the client's
``rates_mbps[helper]``, the client's ``rate_mbps`` and ``default_rate_mbps``. A
helper's ``link_mbps`` (optional) is the capacity of its own link, shared by the clients
it serves: the planner then also chooses each client's share
(:mod:`flsplit.plan.cuts.links`). ``cuts`` (optional) restricts the candidate cut pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from flsplit.plan.cuts.problem import CutProblem, build_problem
from flsplit.plan.cuts.profiles import LayerProfile, node_costs

NODES_FORMAT = "flsplit-nodes"
NODES_VERSION = 1


class NodesError(ValueError):
    """NODES.json is invalid; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not np.isfinite(value):
        raise NodesError(where, f"expected a positive number, got {value!r}")
    return float(value)


def _nodes(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    nodes = data.get(key)
    if not isinstance(nodes, list) or not nodes:
        raise NodesError(key, "expected a non-empty list of nodes")
    ids: set[str] = set()
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise NodesError(f"{key}[{i}]", "expected an object")
        for field_name in ("id", "device"):
            if not isinstance(node.get(field_name), str) or not node[field_name]:
                raise NodesError(f"{key}[{i}].{field_name}", "expected a non-empty string")
        if node["id"] in ids:
            raise NodesError(f"{key}[{i}].id", f"duplicate id {node['id']!r}")
        ids.add(node["id"])
    return nodes


def _rates(data: dict[str, Any], clients: list[dict[str, Any]],
           helpers: list[dict[str, Any]]) -> np.ndarray:
    overrides = data.get("rates_mbps", {})
    if not isinstance(overrides, dict):
        raise NodesError("rates_mbps", "expected an object client -> helper -> Mbit/s")
    helper_ids = [h["id"] for h in helpers]
    client_ids = {c["id"] for c in clients}
    for client, row in overrides.items():
        if client not in client_ids:
            raise NodesError(f"rates_mbps.{client}", "unknown client")
        if not isinstance(row, dict):
            raise NodesError(f"rates_mbps.{client}", "expected an object helper -> Mbit/s")
        for helper in row:
            if helper not in helper_ids:
                raise NodesError(f"rates_mbps.{client}.{helper}", "unknown helper")
    default = data.get("default_rate_mbps")
    rates = np.zeros((len(clients), len(helpers)))
    for i, client in enumerate(clients):
        own = client.get("rates_mbps", {})
        if not isinstance(own, dict):
            raise NodesError(f"clients[{i}].rates_mbps", "expected an object helper -> Mbit/s")
        for helper in own:
            if helper not in helper_ids:
                raise NodesError(f"clients[{i}].rates_mbps.{helper}", "unknown helper")
        for j, helper in enumerate(helper_ids):
            for value, where in (
                (overrides.get(client["id"], {}).get(helper),
                 f"rates_mbps.{client['id']}.{helper}"),
                (own.get(helper), f"clients[{i}].rates_mbps.{helper}"),
                (client.get("rate_mbps"), f"clients[{i}].rate_mbps"),
                (default, "default_rate_mbps"),
            ):
                if value is not None:
                    rates[i, j] = _positive(value, where)
                    break
            else:
                raise NodesError(f"clients[{i}].rates_mbps.{helper}",
                                 "no link rate (give it or set default_rate_mbps)")
    return rates


def problem_from_nodes(data: dict[str, Any], profile: LayerProfile, name: str = ""
                       ) -> CutProblem:
    """Build the :class:`~flsplit.plan.cuts.problem.CutProblem` of a NODES.json document.

    Raises
    ------
    NodesError
        Naming the offending field (``clients[2].device``, ``rates_mbps.c0.h1`` ...).
    """
    if not isinstance(data, dict):
        raise NodesError("<root>", "expected a JSON object")
    if data.get("format", NODES_FORMAT) != NODES_FORMAT:
        raise NodesError("format", f"expected {NODES_FORMAT!r}")
    if data.get("version", NODES_VERSION) != NODES_VERSION:
        raise NodesError("version", f"unsupported version {data.get('version')!r}, "
                         "expected 1")
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise NodesError("reference", "expected a profile column name")
    clients, helpers = _nodes(data, "clients"), _nodes(data, "helpers")
    costs = {}
    for key, nodes in (("clients", clients), ("helpers", helpers)):
        costs[key] = []
        for i, node in enumerate(nodes):
            memory = node.get("memory_mib")
            if memory is not None:
                memory = _positive(memory, f"{key}[{i}].memory_mib")
            try:
                costs[key].append(node_costs(profile, node["device"], memory, reference))
            except ValueError as exc:
                raise NodesError(f"{key}[{i}].device", str(exc)) from None
    pairs = data.get("cuts")
    well_formed = isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p)
        for p in pairs)
    if pairs is not None and not well_formed:
        raise NodesError("cuts", "expected a list of [c1, c2] integer pairs")
    links = [np.inf if h.get("link_mbps") is None
             else _positive(h["link_mbps"], f"helpers[{i}].link_mbps")
             for i, h in enumerate(helpers)]
    try:
        return build_problem(
            profile, costs["clients"], costs["helpers"], _rates(data, clients, helpers),
            pairs=pairs, client_ids=[c["id"] for c in clients],
            helper_ids=[h["id"] for h in helpers], name=name, link_mbps=links,
            meta={"model": profile.model,
                  "client_devices": [c["device"] for c in clients],
                  "helper_devices": [h["device"] for h in helpers]},
        )
    except NodesError:
        raise
    except ValueError as exc:
        where, _, message = str(exc).partition(": ")
        if where.startswith("pairs"):
            where = "cuts" + where[len("pairs"):]
        raise NodesError(where, message) from None


def load_nodes(path: str | Path, profile: LayerProfile) -> CutProblem:
    """Read NODES.json and build its cut problem."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise NodesError("<json>", f"{path}: {exc}") from None
    return problem_from_nodes(data, profile, name=Path(path).stem)
