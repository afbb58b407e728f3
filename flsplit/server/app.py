"""A Flower ``ServerApp`` that runs split learning with helper nodes for a task.

:func:`make_server_app` reads as the run's steps; each step lives with its concept:
mode checks and the model split in :mod:`flsplit.server.modes`, resuming and
checkpoints in :mod:`flsplit.server.checkpoint`, the planned strategy in
:mod:`flsplit.server.planning`, server-side evaluation in
:mod:`flsplit.server.evaluation`, ``history.json`` in :mod:`flsplit.server.history` and
``status.json`` (running, completed or failed, round by round) in
:mod:`flsplit.server.status`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from flwr.supercore import log

from flsplit.config import RunConfig
from flsplit.runtime.memory import peak_rss_mib
from flsplit.server.checkpoint import checkpoint_writer, resume_point, saved_arrays, shift_rounds
from flsplit.server.evaluation import server_evaluation
from flsplit.server.history import history_writer, resumed_state, write_history
from flsplit.server.modes import mode_split
from flsplit.server.planning import emulated_links, planned_strategy
from flsplit.server.status import RunStatus
from flsplit.task import SplitTask
from strategies.split import SplitStrategy

StrategyFn = Callable[[Mapping[str, Any]], Strategy]
ResultHook = Callable[[ArrayRecord, Result, SplitStrategy], None]
RoundHook = Callable[[int, ArrayRecord, SplitStrategy], None]


def default_strategy(config: Mapping[str, Any]) -> Strategy:
    """FedAvg weighted by example counts, evaluating on a fraction of the clients."""
    return FedAvg(fraction_evaluate=RunConfig.of(config).fraction_evaluate)


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

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        # `flwr run` cannot tell a failed run from a completed one: status.json can
        status = RunStatus.for_run(context, run_config)
        try:
            run(grid, context, status)
        except BaseException as err:
            status.failed(err)
            raise
        status.completed()

    def run(grid: Grid, context: Context, status: RunStatus) -> None:
        settings = task.settings(run_config, context.run_config)  # checked once, here
        config = settings.as_dict()
        model = task.model_fn(config)
        initial = ArrayRecord(model.state_dict())
        split = mode_split(task, settings)
        num_rounds = settings.num_server_rounds
        checkpoint_dir = settings.checkpoint_dir
        saved = resume_point(checkpoint_dir, config, model)
        done = 0
        if saved is not None:
            done = min(saved.server_round, num_rounds)
            initial = saved_arrays(saved)
            log(INFO, "resuming from %s after round %d of %d", checkpoint_dir, done, num_rounds)
        status.started(done, num_rounds)
        strategy = _split_strategy(task, settings, split, model, strategy_fn(config), done)
        strategy.on_round_end = status.after_round(strategy.on_round_end)
        if saved is not None:
            # the rounds before the resume point stay in history.json
            strategy.load_state(resumed_state(saved.state, settings.output_dir, done))
        if done >= num_rounds:
            log(INFO, "all %d rounds are done according to %s", num_rounds, checkpoint_dir)
            if settings.output_dir:
                write_history(settings.output_dir, strategy)
            return
        result = _run_rounds(grid, task, settings, strategy, initial, num_rounds, done)
        log(
            INFO,
            "peak memory: ServerApp process %.0f MiB, helpers %s",
            peak_rss_mib(),
            {h: round(m) for h, m in sorted(strategy.helper_peak_mib.items())} or "-",
        )
        if settings.output_dir:
            write_history(settings.output_dir, strategy)
        if on_result is not None:
            on_result(initial, result, strategy)

    return app


def _split_strategy(
    task: SplitTask,
    config: RunConfig,
    split: Any,
    model: Any,
    aggregation: Strategy,
    done: int,
) -> SplitStrategy:
    """The split strategy the run config asks for, around ``aggregation``, continuing
    after ``done`` rounds: planned every round, or round-robin (also for FedAvg mode).
    After every round it writes the checkpoint, then ``history.json``."""
    hooks: list[RoundHook] = []
    if config.checkpoint_dir:
        hooks.append(checkpoint_writer(config.checkpoint_dir, config.as_dict()))
    if config.output_dir:
        hooks.append(history_writer(config.output_dir))
    common = {
        "strategy": aggregation,
        "round_timeout": config.round_timeout,
        "split": config.mode == "split",
        "min_completed_clients": config.min_completed_clients,
        "round_offset": done,
        "on_round_end": _each(hooks) if hooks else None,
        "run_config": config,
    }
    if config.mode == "split" and config.planned:
        return planned_strategy(task, config, split, model, common)
    if config.cut_candidates:
        log(WARNING, "cut-candidates is ignored without a planner (run config planner)")
    # emulated links apply with or without a planner (the same table, the same draws)
    link = emulated_links(config) if config.mode == "split" else None
    strategy = SplitStrategy.from_split(
        split, model, task.example_input(config.as_dict()), link=link, **common
    )
    if link is not None:
        link.bind(strategy)
    return strategy


def _each(hooks: list[RoundHook]) -> RoundHook:
    """One ``on_round_end`` hook running ``hooks`` in turn."""

    def run(server_round: int, arrays: ArrayRecord, strategy: SplitStrategy) -> None:
        for hook in hooks:
            hook(server_round, arrays, strategy)

    return run


def _run_rounds(
    grid: Grid,
    task: SplitTask,
    config: RunConfig,
    strategy: SplitStrategy,
    initial: ArrayRecord,
    num_rounds: int,
    done: int,
) -> Result:
    """Run the rounds after the first ``done`` of ``num_rounds``; results carry the run's
    round numbers."""
    # The run config travels with every train and evaluate message, as in Flower's own
    # apps, so an app's train handler sees the server's settings.
    train_config = ConfigRecord(
        {k: v for k, v in config.values.items() if isinstance(v, int | float | str | bool)}
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=num_rounds - done,
        timeout=config.round_timeout + 60.0,
        train_config=train_config,
        evaluate_config=ConfigRecord(dict(train_config)),
        evaluate_fn=server_evaluation(task, config.as_dict(), round_offset=done),
    )
    if done:
        shift_rounds(result, done)
    return result
