"""Multi-hop instance and plan files (JSON, see ``docs/multihop.md``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from flsplit.config import CodecSetting, parse_codec
from flsplit.model.presets import PRESETS, PROFILE_DEVICE_NAMES
from flsplit.plan.cuts.profiles import (
    LayerProfile,
    layer_profile,
    load_layer_profile,
    resolve_device,
)
from flsplit.plan.multihop.problem import (
    MULTIHOP_FORMAT,
    MULTIHOP_VERSION,
    MultihopError,
    MultihopPlan,
    MultihopProblem,
)


def _number(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) \
            or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise MultihopError(where, f"expected a {kind} number, got {value!r}")
    return float(value)


CODEC_KEYS = ("compress_activations", "compress_gradients")


def _codecs(data: dict[str, Any], where: str, default: tuple[CodecSetting, CodecSetting]
            ) -> tuple[CodecSetting, CodecSetting]:
    """The codecs ``data`` sets (``compress_activations``, ``compress_gradients``), else
    ``default``'s."""
    out = list(default)
    for i, key in enumerate(CODEC_KEYS):
        if key in data:
            try:
                out[i] = parse_codec(data[key], key)
            except ValueError as exc:
                raise MultihopError(f"{where}{key}", str(exc).replace("run config ", "")
                                    ) from None
    return out[0], out[1]


def _byte_ratio(data: dict[str, Any], helpers: list[Any], index: dict[str, int]
                ) -> np.ndarray:
    """Every link's bytes per raw byte (activations and gradients averaged): the
    client's codecs (the instance's, its own where it sets them), on a hop from a helper
    to a later one that helper's where it sets them."""
    n = len(index)
    run = _codecs(data, "", (CodecSetting(), CodecSetting()))
    own = _codecs(data.get("client") or {}, "client.", run)
    ratio = np.full((n, n), (own[0].byte_ratio + own[1].byte_ratio) / 2)
    for i, helper in enumerate(helpers, start=1):
        hop = _codecs(helper, f"helpers[{i - 1}].", own)
        ratio[i, i + 1:] = ratio[i + 1:, i] = (hop[0].byte_ratio + hop[1].byte_ratio) / 2
    return ratio


def _helper_links(rate: np.ndarray, helpers: list[Any], index: dict[str, int]) -> None:
    """Remove the helper-helper links that a helper's ``helper_links`` (the helper ids it
    has a link with) leaves out."""
    for i, helper in enumerate(helpers, start=1):
        declared = helper.get("helper_links")
        if declared is None:
            continue
        where = f"helpers[{i - 1}].helper_links"
        if not isinstance(declared, list) or not all(isinstance(h, str) for h in declared):
            raise MultihopError(where, "expected a list of helper ids")
        for other in declared:
            if other not in index or index[other] == 0 or index[other] == i:
                raise MultihopError(where, f"{other!r} is not another helper's id")
        reached = {index[h] for h in declared}
        for j in range(1, len(helpers) + 1):
            if j != i and j not in reached:
                rate[i, j] = rate[j, i] = 0.0


def _node(profile: LayerProfile, data: Any, where: str, reference: str | None
          ) -> tuple[str, list[float], list[bool], float, float]:
    if not isinstance(data, dict):
        raise MultihopError(where, "expected an object with id and device")
    for key in ("id", "device"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise MultihopError(f"{where}.{key}", "expected a non-empty string")
    device = data["device"]
    try:
        fwd, bwd, upd = resolve_device(profile, device, reference)
    except ValueError as exc:
        raise MultihopError(f"{where}.device", str(exc)) from None
    if "speed_factor" in data:
        factor = _number(data["speed_factor"], f"{where}.speed_factor", positive=True)
        fwd, bwd, upd = ([t * factor for t in col] for col in (fwd, bwd, upd))
    times = np.asarray(fwd) + np.asarray(bwd) + np.asarray(upd)
    runnable = [bool(t > 0) for t in times]
    if "memory_mib" in data:
        memory = _number(data["memory_mib"], f"{where}.memory_mib", positive=True)
    else:
        inverse = {v: k for k, v in PROFILE_DEVICE_NAMES.items()}
        known = PRESETS.get(device) or PRESETS.get(inverse.get(device, ""))
        if known is None:
            raise MultihopError(f"{where}.memory_mib", f"required for device {device!r} "
                                "(not a preset)")
        memory = float(known.memory_mib)
    overhead = _number(data.get("overhead_ms", 0.0), f"{where}.overhead_ms")
    return data["id"], list(times), runnable, memory, overhead


def problem_from_dict(data: dict[str, Any], base_dir: str | Path | None = None,
                      profile: LayerProfile | dict[str, Any] | None = None) -> MultihopProblem:
    """Build a :class:`MultihopProblem` from the instance JSON (see ``docs/multihop.md``).

    Parameters
    ----------
    data
        The parsed instance.
    base_dir
        Directory a relative ``profile`` path is resolved against.
    profile
        A profile that replaces the instance's ``profile`` field.

    Raises
    ------
    MultihopError
        Naming the offending field.
    """
    if not isinstance(data, dict):
        raise MultihopError("instance", "expected a JSON object")
    if data.get("format", MULTIHOP_FORMAT) != MULTIHOP_FORMAT:
        raise MultihopError("format", f"expected {MULTIHOP_FORMAT!r}, got "
                            f"{data.get('format')!r}")
    if data.get("version", MULTIHOP_VERSION) != MULTIHOP_VERSION:
        raise MultihopError("version", f"unsupported version {data.get('version')!r}")
    source = profile if profile is not None else data.get("profile")
    raw: dict[str, Any] | None = None
    if isinstance(source, LayerProfile):
        prof = source
    else:
        if isinstance(source, str):
            path = Path(source)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            try:
                raw = json.loads(path.read_text())
            except FileNotFoundError:
                raise MultihopError("profile", f"no such file {str(path)!r}") from None
            except json.JSONDecodeError as exc:
                raise MultihopError("profile", f"{path}: not valid JSON ({exc})") from None
        elif isinstance(source, dict):
            raw = source
        else:
            raise MultihopError("profile", "expected a profile file path or object")
        try:
            prof = layer_profile(raw)
        except ValueError as exc:
            raise MultihopError("profile", str(exc)) from None
    profile_batch = data.get("profile_batch", (raw or {}).get("batch_size_inferred"))
    batch = data.get("batch_size", profile_batch)
    if batch is None:
        raise MultihopError("batch_size", "required (the profile gives no batch size)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MultihopError("batch_size", f"expected a positive integer, got {batch!r}")
    profile_batch = batch if profile_batch is None else profile_batch
    base_batch = _number(profile_batch, "profile_batch", positive=True)
    reference = data.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise MultihopError("reference", "expected a profile column name")
    client = _node(prof, data.get("client"), "client", reference)
    helpers_raw = data.get("helpers")
    if not isinstance(helpers_raw, list) or not helpers_raw:
        raise MultihopError("helpers", "expected a non-empty list of helpers")
    nodes = [client] + [_node(prof, h, f"helpers[{i}]", reference)
                        for i, h in enumerate(helpers_raw)]
    ids = [n[0] for n in nodes]
    for i, node_id in enumerate(ids[1:]):
        if node_id in ids[:i + 1]:
            raise MultihopError(f"helpers[{i}].id", f"duplicate id {node_id!r}")
    index = {node_id: i for i, node_id in enumerate(ids)}
    n = len(ids)
    rate, latency = np.zeros((n, n)), np.zeros((n, n))
    default = data.get("default_link")
    if default is not None:
        if not isinstance(default, dict):
            raise MultihopError("default_link", "expected {rate_mbps, latency_ms}")
        rate[:] = _number(default.get("rate_mbps"), "default_link.rate_mbps", positive=True)
        latency[:] = _number(default.get("latency_ms", 0.0), "default_link.latency_ms")
    links = data.get("links", [])
    if not isinstance(links, list):
        raise MultihopError("links", "expected a list of {between, rate_mbps, latency_ms}")
    for i, link in enumerate(links):
        where = f"links[{i}]"
        if not isinstance(link, dict):
            raise MultihopError(where, "expected an object")
        pair = link.get("between")
        if not isinstance(pair, list) or len(pair) != 2 or pair[0] == pair[1]:
            raise MultihopError(f"{where}.between", "expected two different node ids")
        for end in pair:
            if end not in index:
                raise MultihopError(f"{where}.between", f"unknown node {end!r}")
        u, w = index[pair[0]], index[pair[1]]
        rate[u, w] = rate[w, u] = _number(link.get("rate_mbps"), f"{where}.rate_mbps",
                                          positive=True)
        latency[u, w] = latency[w, u] = _number(link.get("latency_ms", 0.0),
                                                f"{where}.latency_ms")
    np.fill_diagonal(rate, 0.0)
    np.fill_diagonal(latency, 0.0)
    _helper_links(rate, helpers_raw, index)
    byte_ratio = _byte_ratio(data, helpers_raw, index)
    micro = data.get("micro_batch")
    if micro is not None and (isinstance(micro, bool) or not isinstance(micro, int)
                              or not 1 <= micro <= batch):
        raise MultihopError("micro_batch", f"expected an integer 1 .. {batch}, got {micro!r}")
    for key in ("min_head", "min_tail"):
        value = data.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MultihopError(key, f"expected an integer >= 1, got {value!r}")
    scale = batch / base_batch
    fixed = np.clip(prof.memory_kib - prof.activation_kib, 0.0, None)
    return MultihopProblem(
        node_ids=ids,
        sample_ms=np.array([node[1] for node in nodes]) / base_batch,
        runnable=np.array([node[2] for node in nodes]),
        overhead_ms=np.array([node[4] for node in nodes]),
        memory_mib=np.array([node[3] for node in nodes]),
        layer_memory_mib=(fixed + prof.activation_kib * scale) / 1024.0,
        activation_kib=prof.activation_kib / base_batch,
        rate_mbps=rate, latency_ms=latency, batch_size=int(batch), micro_batch=micro,
        min_head=int(data.get("min_head", 1)), min_tail=int(data.get("min_tail", 1)),
        name=str(data.get("name", "")), meta=dict(data.get("meta", {}) or {}),
        byte_ratio=byte_ratio,
    )


def load_problem(path: str | Path, profile: str | Path | None = None) -> MultihopProblem:
    """Read an instance file; a relative ``profile`` path is resolved against the file's
    directory; ``profile`` (a path) replaces it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MultihopError("instance", f"{path}: not valid JSON ({exc})") from None
    prof = None
    if profile is not None:
        try:
            prof = load_layer_profile(profile)
        except FileNotFoundError:
            raise MultihopError("profile", f"no such file {str(profile)!r}") from None
        except ValueError as exc:
            raise MultihopError("profile", str(exc)) from None
    return problem_from_dict(data, base_dir=path.parent, profile=prof)


def save_plan(plan: MultihopPlan, path: str | Path) -> None:
    """Write the plan JSON."""
    Path(path).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
