"""Which run-config modes go together, and the model split a mode asks for.

``mode`` is ``"split"`` (split learning through helpers) or ``"fedavg"``; global
sampling (``sampler``), the planner (``planner``) and helper chains (``chain-length``)
each rule out some of the others. With a planner, chains are planned every round
(:mod:`flsplit.server.chain_planning`); without, assigned round-robin at the run's cuts.
The checks run before anything starts, so a wrong combination fails with a message that
names the fix.
"""

from __future__ import annotations

from logging import INFO
from typing import Any

from flwr.supercore import log

from flsplit.config import ChainSettings, RunConfig
from flsplit.model.chain_cuts import chain_cut_names
from flsplit.task import SplitTask


def mode_split(task: SplitTask, config: RunConfig) -> Any:
    """Check the run config's modes; return the model split they ask for.

    Parameters
    ----------
    task : SplitTask
        Model and example input.
    config : RunConfig
        Run config (its modes were checked when it was parsed).

    Returns
    -------
    SplitModel
        The model split at ``cuts``, or, in split mode with helper chains, at the outer
        cuts and the chain's inner cuts (:func:`chain_split`).

    Raises
    ------
    ValueError
        From :func:`chain_split`.
    """
    split = task.split(config.as_dict())
    if config.planned_chains:
        check_planned_chains(config)
        return split  # the planner cuts every client's body anew each round
    if config.mode == "split" and config.chain.length > 1:
        split = chain_split(task, config, split, config.chain)
    return split


def check_planned_chains(config: RunConfig) -> None:
    """Refuse what planned chains cannot combine with, naming the fix.

    Raises
    ------
    ValueError
        With ``cut-candidates`` or explicit ``chain-cuts`` (the chain planner chooses
        every cut), or ``helper-memory = "shared"`` (planned micro-batches need a body
        per client).
    """
    chain = config.chain
    length = "'auto'" if chain.auto else str(chain.length)
    if config.cut_candidates:
        raise ValueError(
            f"run config chain-length={length} with planner={config.planner!r} and "
            "cut-candidates: the chain planner chooses every client's cuts among all the "
            "model's candidate cuts; clear cut-candidates"
        )
    if chain.cuts != "auto":
        raise ValueError(
            f"run config chain-cuts={chain.cuts!r} with planner={config.planner!r}: the "
            "chain planner chooses every client's inner cuts; set chain-cuts='auto'"
        )
    if config.helper_memory != "per-client":
        raise ValueError(
            f"run config helper-memory={config.helper_memory!r} with planned chains: the "
            "planner chooses micro-batches, which need a body per client; set "
            "helper-memory='per-client'"
        )


def chain_split(
    task: SplitTask, config: RunConfig, split: Any, chain: ChainSettings
) -> Any:
    """The model split at the outer cuts and a chain's inner cuts (``chain-cuts``).

    Raises
    ------
    ValueError
        If the run config asks for cut candidates (every client of a round-robin chain
        keeps the same cuts), or the inner cuts are invalid; the message names the value
        and the fix.
    """
    if config.cut_candidates:
        raise ValueError(
            f"run config chain-length={chain.length} with cut-candidates: every client of a "
            "chain keeps the same cuts; clear cut-candidates or set chain-length=1"
        )
    values = config.as_dict()
    model = task.model_fn(values)
    example = task.example_input(values)
    names = chain_cut_names(model, example, split.cuts, chain, batch_size=config.batch_size)
    log(
        INFO,
        "helper chains of %d: cuts %s (%s), %d micro-batch(es) per batch",
        chain.length,
        ",".join(names),
        "balanced helper memory" if chain.cuts == "auto" else "chain-cuts",
        chain.micro_batches,
    )
    return task.split({**values, "cuts": ",".join(names)})
