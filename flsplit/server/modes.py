"""Which run-config modes go together, and the model split a mode asks for.

``mode`` is ``"split"`` (split learning through helpers) or ``"fedavg"``; global
sampling (``sampler``), the planner (``planner``) and helper chains (``chain-length``)
each rule out some of the others. The checks run before anything starts, so a wrong
combination fails with a message that names the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.supercore import log

from flsplit.model.chain_cuts import ChainSettings, chain_cut_names, chain_settings
from flsplit.plan.sampling.samplers import check_sync_config
from flsplit.task import SplitTask


def mode_split(task: SplitTask, config: Mapping[str, Any]) -> Any:
    """Check the run config's modes; return the model split they ask for.

    Parameters
    ----------
    task : SplitTask
        Model and example input.
    config : Mapping
        Run config.

    Returns
    -------
    SplitModel
        The model split at ``cuts``, or, in split mode with helper chains, at the outer
        cuts and the chain's inner cuts (:func:`chain_split`).

    Raises
    ------
    ValueError
        From :func:`check_modes` or :func:`chain_split`.
    """
    check_modes(config)
    split = task.split(config)
    chain = chain_settings(config)
    if str(config["mode"]) == "split" and chain.length > 1:
        split = chain_split(task, config, split, chain)
    return split


def check_modes(config: Mapping[str, Any]) -> None:
    """Refuse run-config combinations that do not go together.

    Global sampling (``sampler`` other than ``"local"``) needs ``mode = "split"``, the
    ``round-robin`` planner and one helper per client (``chain-length = 1``).

    Raises
    ------
    ValueError
        Naming the values and the fix.
    """
    mode = str(config["mode"])
    if mode not in ("split", "fedavg"):
        raise ValueError(f"run config mode={mode!r} is not 'split' or 'fedavg'")
    if not check_sync_config(config)["sync"]:
        return
    sampler = config["sampler"]
    if mode != "split":
        raise ValueError(
            f"run config sampler={sampler!r} needs mode='split' (synchronous steps through "
            "a helper); use sampler='local' with mode='fedavg'"
        )
    if str(config["planner"]) != "round-robin":
        raise ValueError(
            f"run config sampler={sampler!r} runs synchronous steps, which the planner "
            f"{config['planner']!r} does not plan; set planner='round-robin' (or "
            "sampler='local' to plan local batches)"
        )
    length = chain_settings(config).length
    if length > 1:
        raise ValueError(
            f"run config sampler={sampler!r} with chain-length={length}: synchronous steps "
            "run on one helper per client; set chain-length=1 or sampler='local'"
        )


def chain_split(
    task: SplitTask, config: Mapping[str, Any], split: Any, chain: ChainSettings
) -> Any:
    """The model split at the outer cuts and a chain's inner cuts (``chain-cuts``).

    Raises
    ------
    ValueError
        If the run config asks for a planner (chains are assigned round-robin), or the
        inner cuts are invalid; the message names the value and the fix.
    """
    if str(config["planner"]) != "round-robin":
        raise ValueError(
            f"run config chain-length={chain.length} with planner={config['planner']!r}: "
            "helper chains are assigned round-robin; set planner='round-robin' or "
            "chain-length=1"
        )
    if str(config.get("cut-candidates", "")).strip():
        raise ValueError(
            f"run config chain-length={chain.length} with cut-candidates: every client of a "
            "chain keeps the same cuts; clear cut-candidates or set chain-length=1"
        )
    model = task.model_fn(config)
    example = task.example_input(config)
    names = chain_cut_names(
        model, example, split.cuts, chain, batch_size=int(config["batch-size"])
    )
    log(
        INFO,
        "helper chains of %d: cuts %s (%s), %d micro-batch(es) per batch",
        chain.length,
        ",".join(names),
        "balanced helper memory" if chain.cuts == "auto" else "chain-cuts",
        chain.micro_batches,
    )
    return task.split({**config, "cuts": ",".join(names)})
