"""Multi-client chain instances (JSON): the single-client multi-hop instance with a list
``clients`` instead of ``client`` (see ``docs/multihop.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flsplit.plan.cuts.profiles import LayerProfile, layer_profile, load_layer_profile
from flsplit.plan.multihop.chain_problem import ChainPlan, ChainProblem
from flsplit.plan.multihop.files import problem_from_dict
from flsplit.plan.multihop.problem import MultihopError


def is_chain_instance(data: Any) -> bool:
    """Whether a parsed multi-hop instance lists several clients (``clients``)."""
    return isinstance(data, dict) and "clients" in data


def chain_problem_from_dict(data: dict[str, Any], base_dir: str | Path | None = None,
                            profile: LayerProfile | None = None) -> ChainProblem:
    """Build a :class:`ChainProblem`: each client with the shared fields, the helpers
    and the links that touch it or join two helpers.

    Raises
    ------
    MultihopError
        Naming the offending field (``clients[3].memory_mib``, ``links[2].between`` ...).
    """
    clients = data.get("clients")
    if not isinstance(clients, list) or not clients:
        raise MultihopError("clients", "expected a non-empty list of clients")
    if "client" in data:
        raise MultihopError("client", "give either client or clients, not both")
    helpers = data.get("helpers")
    if not isinstance(helpers, list):
        raise MultihopError("helpers", "expected a non-empty list of helpers")
    ids = [c.get("id") if isinstance(c, dict) else None for c in clients]
    helper_ids = {h.get("id") for h in helpers if isinstance(h, dict)}
    links = data.get("links", [])
    if not isinstance(links, list):
        raise MultihopError("links", "expected a list of {between, rate_mbps, latency_ms}")
    known = set(ids) | helper_ids
    for i, link in enumerate(links):
        pair = link.get("between") if isinstance(link, dict) else None
        if not isinstance(pair, list) or len(pair) != 2:
            raise MultihopError(f"links[{i}].between", "expected two different node ids")
        for end in pair:
            if end not in known:
                raise MultihopError(f"links[{i}].between", f"unknown node {end!r}")
    if profile is None and not isinstance(data.get("profile"), dict):
        source = data.get("profile")
        if isinstance(source, str):
            path = Path(source)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            try:
                profile = layer_profile(json.loads(path.read_text()))
                data = {**data, "profile_batch": data.get(
                    "profile_batch", json.loads(path.read_text()).get("batch_size_inferred"))}
            except FileNotFoundError:
                raise MultihopError("profile", f"no such file {str(path)!r}") from None
            except (json.JSONDecodeError, ValueError) as exc:
                raise MultihopError("profile", f"{path}: {exc}") from None
    problems = []
    for k, client in enumerate(clients):
        own = [link for link in links
               if all(end == ids[k] or end in helper_ids for end in link["between"])]
        single = {key: value for key, value in data.items() if key != "clients"}
        single.update(client=client, links=own)
        try:
            problems.append(problem_from_dict(single, base_dir=base_dir, profile=profile))
        except MultihopError as exc:
            field = exc.field if hasattr(exc, "field") else ""
            if isinstance(field, str) and field.startswith("client"):
                field = f"clients[{k}]" + field[len("client"):]
            raise MultihopError(field, str(exc).split(": ", 1)[-1]) from None
    return ChainProblem(problems, name=str(data.get("name", "")))


def load_chain_problem(path: str | Path, profile: str | Path | None = None) -> ChainProblem:
    """Read a multi-client chain instance; ``profile`` (a path) replaces its profile."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MultihopError("instance", f"{path}: not valid JSON ({exc})") from None
    prof = None
    if profile is not None:
        try:
            raw = json.loads(Path(profile).read_text())
            prof = load_layer_profile(profile)
        except FileNotFoundError:
            raise MultihopError("profile", f"no such file {str(profile)!r}") from None
        except (json.JSONDecodeError, ValueError) as exc:
            raise MultihopError("profile", str(exc)) from None
        data = {**data, "profile_batch": data.get("profile_batch",
                                                  raw.get("batch_size_inferred"))}
    return chain_problem_from_dict(data, base_dir=path.parent, profile=prof)


def save_chain_plan(plan: ChainPlan, problem: ChainProblem, path: str | Path) -> None:
    """Write the plan JSON."""
    Path(path).write_text(json.dumps(plan.to_dict(problem), indent=1) + "\n")
