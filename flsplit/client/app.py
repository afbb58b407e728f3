"""Flower ``ClientApp`` wiring of both roles of split learning.

:func:`enable_split_learning` adds three message handlers to any ``ClientApp``, under
message types of their own so that the app's ``train`` and ``evaluate`` stay as they are:

- ``query.split``: report role, example count, device information and (helpers) the
  data-plane address (:mod:`flsplit.client.discovery`).
- ``train.split``: a client trains its head and tail through its helper
  (:mod:`flsplit.client.client_role`).
- ``train.helper``: a helper serves the body (or a chain's body piece) to the clients
  listed in the message until all of them finished or the round deadline passes, then
  returns one body per client (:mod:`flsplit.client.helper_role`).

:func:`make_client_app` builds a complete app from a :class:`~flsplit.task.SplitTask`:
the three handlers plus ``train`` (plain local training of the full model, for FedAvg
comparison runs) and ``evaluate`` (the full global model on the client's validation data).

What a node is (role, data partition, device, addresses, TLS material) is read in
:mod:`flsplit.client.node`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flsplit.client.client_role import evaluate_full_model, train_full_model, train_split_round
from flsplit.client.discovery import answer_query
from flsplit.client.helper_role import serve_helper_round
from flsplit.client.node import (
    check_partition_view,
    check_simulation_roles,
    client_partition_view,
)
from flsplit.client.records import config_of
from flsplit.config import RunConfig
from flsplit.engine import in_simulation, lift_engine_limit
from flsplit.protocol import HELPER_ACTION, SPLIT_ACTION
from flsplit.task import SplitTask


@dataclass(frozen=True)
class SplitLearning:
    """What :func:`enable_split_learning` was given for a ``ClientApp``.

    Attributes
    ----------
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping
        Settings used where the run config is silent.
    """

    task: SplitTask
    run_config: Mapping[str, Any] = field(default_factory=dict)


_ENABLED: weakref.WeakKeyDictionary[ClientApp, SplitLearning] = weakref.WeakKeyDictionary()


def split_learning_of(app: ClientApp) -> SplitLearning | None:
    """The task and settings ``app`` runs split learning with, or None if it does not.

    ``flsplit simulate`` finds a Flower app's split learning this way, from the
    ``ClientApp`` its ``pyproject.toml`` names.
    """
    return _ENABLED.get(app)


def enable_split_learning(
    app: ClientApp, task: SplitTask, run_config: Mapping[str, Any] | None = None
) -> ClientApp:
    """Register the split-learning handlers of both roles on ``app``.

    Parameters
    ----------
    app : ClientApp
        An app built with the ``@app.train()`` / ``@app.evaluate()`` decorators (its own
        handlers are kept).
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping, optional
        Settings used where the run config is silent (``flwr run`` passes the app's
        ``[tool.flwr.app.config]``; the Python simulation API passes none).

    Returns
    -------
    ClientApp
        ``app`` itself.
    """
    _ENABLED[app] = SplitLearning(task, dict(run_config or {}))
    # Built in the simulation engine's process just before the engine sizes its thread
    # pool: lift the pool's CPU-count limit so that every helper and a client run at once.
    lift_engine_limit()

    def settings(msg: Message | None, context: Context) -> RunConfig:
        # read once per message: the task's defaults, the app's, Flower's run config and
        # the message's config, later ones winning
        config = task.settings(run_config, context.run_config, config_of(msg) if msg else None)
        # virtual nodes share this machine's cores: one torch thread each unless told
        threads = config.torch_threads or (1 if in_simulation() else 0)
        if threads > 0:
            torch.set_num_threads(threads)
        return config

    declared = "num-helpers" in (run_config or {}) or "num-helpers" in task.run_config
    _wrap_lifespan(app, lambda context: settings(None, context),
                   lambda context: declared or "num-helpers" in context.run_config)

    @app.query(SPLIT_ACTION)
    def query(msg: Message, context: Context) -> Message:
        check_partition_view(context)
        return answer_query(msg, context, task, settings(None, context))

    @app.train(SPLIT_ACTION)
    def train(msg: Message, context: Context) -> Message:
        check_partition_view(context)
        return train_split_round(msg, context, task, settings(msg, context))

    @app.train(HELPER_ACTION)
    def serve(msg: Message, context: Context) -> Message:
        check_partition_view(context)
        return serve_helper_round(msg, context, task, settings(msg, context))

    return app


def _wrap_lifespan(
    app: ClientApp,
    settings: Callable[[Context], RunConfig],
    declares_helpers: Callable[[Context], bool],
) -> None:
    """Run every message of ``app`` (its own handlers and flsplit's) inside
    :func:`~flsplit.client.node.client_partition_view`, after the check that a simulation
    says how many of its nodes are helpers, and inside the app's own lifespan."""
    inner = app._lifespan  # Flower keeps the registered lifespan here; no public getter

    @contextlib.contextmanager
    def lifespan(context: Context) -> Iterator[None]:
        check_simulation_roles(context, declares_helpers(context))
        config = settings(context)
        with client_partition_view(context, config), inner(context):
            yield

    app._lifespan = lifespan


def make_client_app(task: SplitTask, run_config: Mapping[str, Any] | None = None) -> ClientApp:
    """Build a complete ``ClientApp`` for ``task``.

    Parameters
    ----------
    task : SplitTask
        Model, data, loss and optimizer.
    run_config : Mapping, optional
        Settings used where the run config is silent.

    Returns
    -------
    ClientApp
        The split-learning handlers of :func:`enable_split_learning`, plus ``train``
        (plain local training of the full model) and ``evaluate`` (the full global model
        on the client's validation data).
    """
    app = ClientApp()

    def settings(msg: Message, context: Context) -> RunConfig:
        return task.settings(run_config, context.run_config, config_of(msg))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_full_model(msg, context, task, settings(msg, context))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return evaluate_full_model(msg, context, task, settings(msg, context))

    return enable_split_learning(app, task, run_config)
