"""A Flower ``ServerApp`` that runs split learning with helper nodes for a task."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from flwr.supercore import log

from flsplit.client.app import peak_rss_mib
from flsplit.model.chain_cuts import chain_cut_names, chain_settings
from flsplit.model.costs import CutCosts, cut_costs, part_costs
from flsplit.model.split import part_state_keys
from flsplit.plan.sampling.samplers import check_sync_config
from flsplit.runtime.emulation import DEFAULT_LINK_MIX, LinkTable
from flsplit.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from flsplit.server.round_planner import FIXED_CUT_METHODS, RoundPlanner
from flsplit.task import SplitTask, evaluate_model, parse_cuts
from strategies.planned import PlannedSplitStrategy
from strategies.split import SplitStrategy

StrategyFn = Callable[[Mapping[str, Any]], Strategy]
ResultHook = Callable[[ArrayRecord, Result, SplitStrategy], None]


def default_strategy(config: Mapping[str, Any]) -> Strategy:
    """FedAvg weighted by example counts, evaluating on a fraction of the clients."""
    return FedAvg(fraction_evaluate=float(config["fraction-evaluate"]))


def make_server_app(
    task: SplitTask,
    run_config: Mapping[str, Any] | None = None,
    strategy_fn: StrategyFn = default_strategy,
    on_result: ResultHook | None = None,
) -> ServerApp:
    """Build the ``ServerApp`` for ``task``.

    Parameters
    ----------
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping, optional
        Settings used where the run config is silent.
    strategy_fn : callable
        Builds the aggregation strategy from the run config (default: FedAvg).
    on_result : callable, optional
        Called with the initial arrays, the run's :class:`Result` and the strategy.

    Returns
    -------
    ServerApp
        Runs ``num-server-rounds`` rounds of split learning (or plain FedAvg when the
        run config says ``mode = "fedavg"``) with server-side evaluation when the task
        has test data.
    """
    app = ServerApp()
    base_config = dict(run_config or {})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = task.config({**base_config, **dict(context.run_config)})
        model = task.model_fn(config)
        initial = ArrayRecord(model.state_dict())
        check_modes(config)
        mode = str(config["mode"])
        split = task.split(config)
        chain = chain_settings(config)
        if mode == "split" and chain.length > 1:
            split = chain_split(task, config, split, chain)
        num_rounds = int(config["num-server-rounds"])
        checkpoint_dir = str(config.get("checkpoint-dir", ""))
        saved = resume_point(checkpoint_dir, config, model)
        done = 0
        if saved is not None:
            done = min(saved.server_round, num_rounds)
            # The saved arrays as they were, not as the model's buffers would cast them
            # (an aggregated num_batches_tracked is a float, say).
            initial = ArrayRecord(_tensors(saved.arrays))
            log(INFO, "resuming from %s after round %d of %d", checkpoint_dir, done, num_rounds)
        common = {
            "strategy": strategy_fn(config),
            "round_timeout": float(config["round-timeout"]),
            "split": mode == "split",
            "min_completed_clients": int(config["min-completed-clients"]),
            "round_offset": done,
            "on_round_end": checkpoint_writer(checkpoint_dir, config) if checkpoint_dir else None,
            "sampling": config,
        }
        if mode == "split" and str(config["planner"]) != "round-robin":
            strategy = planned_strategy(task, config, split, model, common)
        else:
            if str(config.get("cut-candidates", "")).strip():
                log(WARNING, "cut-candidates is ignored without a planner (run config planner)")
            strategy = SplitStrategy.from_split(split, model, task.example_input(config), **common)
        if saved is not None:
            strategy.load_state(saved.state)
        if done >= num_rounds:
            log(INFO, "all %d rounds are done according to %s", num_rounds, checkpoint_dir)
            return
        train_config = ConfigRecord(
            {k: v for k, v in config.items() if isinstance(v, int | float | str | bool)}
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=num_rounds - done,
            timeout=float(config["round-timeout"]) + 60.0,
            train_config=train_config,
            evaluate_config=ConfigRecord(dict(train_config)),
            evaluate_fn=_server_evaluation(task, config, round_offset=done),
        )
        if done:
            _shift_rounds(result, done)
        log(
            INFO,
            "peak memory: ServerApp process %.0f MiB, helpers %s",
            peak_rss_mib(),
            {h: round(m) for h, m in sorted(strategy.helper_peak_mib.items())} or "-",
        )
        output_dir = str(config.get("output-dir", ""))
        if output_dir:
            write_history(Path(output_dir), result, strategy)
        if on_result is not None:
            on_result(initial, result, strategy)

    return app


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


def chain_split(task: SplitTask, config: Mapping[str, Any], split: Any, chain: Any) -> Any:
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


def resume_point(
    checkpoint_dir: str, config: Mapping[str, Any], model: Any
) -> Checkpoint | None:
    """Load the checkpoint of this run config into ``model`` (``None``: start afresh)."""
    if not checkpoint_dir:
        return None

    saved = load_checkpoint(checkpoint_dir, run_fingerprint(config))
    if saved is None:
        return None
    try:
        model.load_state_dict(_tensors(saved.arrays), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint_dir}: the model does not match ({err})") from None
    return saved


def _tensors(arrays: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {key: torch.from_numpy(value.copy()) for key, value in arrays.items()}


def checkpoint_writer(
    checkpoint_dir: str, config: Mapping[str, Any]
) -> Callable[[int, ArrayRecord, SplitStrategy], None]:
    """``on_round_end`` hook writing a checkpoint after every round."""
    fingerprint = run_fingerprint(config)

    def write(server_round: int, arrays: ArrayRecord, strategy: SplitStrategy) -> None:
        numpy_arrays = {key: array.numpy() for key, array in arrays.items()}
        save_checkpoint(
            checkpoint_dir,
            Checkpoint(server_round, numpy_arrays, fingerprint, strategy.state()),
        )
        log(INFO, "round %d: checkpoint written to %s", server_round, checkpoint_dir)

    return write


def _shift_rounds(result: Result, offset: int) -> None:
    """Number a resumed run's results by flsplit's rounds instead of Flower's."""
    for name in (
        "train_metrics_clientapp",
        "evaluate_metrics_clientapp",
        "evaluate_metrics_serverapp",
    ):
        metrics = getattr(result, name)
        shifted = {r + offset: m for r, m in metrics.items()}
        metrics.clear()
        metrics.update(shifted)


def planned_strategy(
    task: SplitTask,
    config: Mapping[str, Any],
    split: Any,
    model: Any,
    common: Mapping[str, Any],
) -> PlannedSplitStrategy:
    """A split strategy planned every round by ``config["planner"]``."""
    links: LinkTable | None = None
    if config.get("emulate"):
        links = LinkTable(
            config.get("link-mbps", DEFAULT_LINK_MIX),
            float(config.get("link-latency-ms", 0.0)),
            seed=int(config.get("seed", 0)),
        )
    holder: list[PlannedSplitStrategy] = []

    def link(client: int, helper: int) -> tuple[float, float]:
        if links is None:
            return 0.0, 0.0
        nodes = holder[0].nodes
        return links(int(nodes[client].info["index"]), int(nodes[helper].info["index"]))

    method = str(config["planner"])
    segments: CutCosts | None = None
    if str(config.get("cut-candidates", "")).strip():
        if method in FIXED_CUT_METHODS:
            log(
                INFO,
                "planner %s is a baseline: every client keeps cuts %s",
                method,
                ",".join(split.cuts),
            )
        else:
            segments = cut_costs(task, config, split)
            log(
                INFO,
                "cut candidates: %s (%d segments profiled on this machine)",
                "; ".join(segments.candidates),
                segments.num_segments,
            )
    costs = segments.part_costs(segments.default) if segments else part_costs(task, config, split)
    log(INFO, "part costs on this machine (one batch): %s", costs)
    planner = RoundPlanner(
        costs,
        link,
        method=method,
        time_limit=float(config["planner-time-limit"]),
        seed=int(config.get("seed", 0)),
        cut_costs=segments,
        cut_method=str(config.get("cut-method", "auto")),
    )
    strategy = PlannedSplitStrategy(
        lambda cuts: part_state_keys(model, parse_cuts(cuts), task.example_input(config)),
        ",".join(split.cuts),
        planner=planner,
        link=link if links is not None else None,
        batch_size=int(config["batch-size"]),
        local_epochs=int(config["local-epochs"]),
        output_dir=str(config.get("output-dir", "")) or None,
        gantt=bool(config.get("gantt", False)),
        **common,
    )
    holder.append(strategy)
    return strategy


def _server_evaluation(
    task: SplitTask, config: Mapping[str, Any], round_offset: int = 0
) -> Callable[[int, ArrayRecord], MetricRecord | None] | None:
    if task.load_test_data is None:
        return None
    test_data = task.load_test_data(config)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round += round_offset
        model = task.model_fn(config)
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        loss, acc, examples = evaluate_model(model, task.batches(test_data), task.loss_fn)
        log(INFO, "round %d: server test_loss %.4f test_acc %.4f", server_round, loss, acc)
        return MetricRecord({"test_loss": loss, "test_acc": acc, "num-examples": examples})

    return evaluate


def write_history(output_dir: Path, result: Result, strategy: SplitStrategy) -> Path:
    """Write per-round metrics and round times as JSON; return the file's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    history = {
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        "server": {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
        "round-wall-seconds": strategy.round_times,
        "helper-peak-rss-mib": strategy.helper_peak_mib,
        "sync-step-examples": strategy.sync_steps,
        "serverapp-peak-rss-mib": peak_rss_mib(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = output_dir / "history.json"
    path.write_text(json.dumps(history, indent=1, default=float))
    return path
