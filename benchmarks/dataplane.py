"""Benchmark: per-batch step time over the gRPC data plane against one process.

For each model, the same three parts (head, body, tail) train on the same batches three
ways: in one process with detached cuts (no data plane); with the helper in a separate
process on loopback, driven by flsplit's own loop; and the same, driven by an app's own
training loop on :class:`~flsplit.model.client_view.ClientModel` (the remote-body
module: autograd over the data plane, the helper following the client's optimizer).
Both sides use the same number of torch threads; since a client and its helper never
compute at the same time, the comparison isolates what the data plane adds
(serialization, validation, gRPC, scheduling) and what the remote-body module adds on top.
Prints one JSON line per case, with the device the parts ran on.

Run ``python -m benchmarks.dataplane`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

if __name__ == "__main__":
    # Client and helper share this machine's cores. OpenMP threads that spin while their
    # process waits on the other one steal the cores it computes on; passive waiting
    # lets each side have them. Set before torch loads OpenMP (the helper process
    # inherits it); both the in-process and the data-plane figures use the same policy.
    # Only as the entry point: importing this module leaves the environment alone.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from flsplit.model.client_view import ClientModel
from flsplit.model.splitting import SplitModel, resolve_cuts, split_model
from flsplit.model.zoo import build_model
from flsplit.runtime.auth import TokenVerifier
from flsplit.runtime.dataplane import HelperClient, HelperServer
from flsplit.runtime.remote_body import RemoteBody
from flsplit.runtime.worker import HelperWorker

DEFAULT_CUTS = {
    "small-cnn": ("conv2", "fc2"),
    "resnet18": ("layer1", "fc"),
}
BENCH_KEY = b"flsplit-bench-key-not-a-secret!!"  # loopback benchmark only


def _bench_verifier() -> TokenVerifier:
    return TokenVerifier(BENCH_KEY, run_id=0, server_round=1, helper="helper", clients=["bench"])


def _split(name: str, cuts: Sequence[str] | None, batch: int) -> SplitModel:
    torch.manual_seed(0)
    model = build_model(name)
    example = torch.randn(batch, 3, 32, 32)
    names = resolve_cuts(model, cuts or DEFAULT_CUTS.get(name), example)
    return split_model(model, names, example)


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _batches(batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,)))
        for _ in range(count)
    ]


def _step_times(step: Any, batches: list, warmup: int) -> list[float]:
    times = []
    for i, (x, y) in enumerate(batches):
        start = time.perf_counter()
        step(x, y)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def in_process_step_times(split: SplitModel, batches: list, warmup: int) -> list[float]:
    """Per-step seconds with head, body and tail in this process, cuts detached."""
    head, body, tail = split.head, split.body, split.tail
    client_opt = _sgd(itertools.chain(head.parameters(), tail.parameters()))
    body_opt = _sgd(body.parameters())
    loss_fn = nn.functional.cross_entropy

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        client_opt.zero_grad()
        body_opt.zero_grad()
        cut1 = head(x)
        body_in = cut1.detach().requires_grad_(True)
        body_out = body(body_in)
        cut2 = body_out.detach().requires_grad_(True)
        loss_fn(tail(cut2), y).backward()
        body_out.backward(cut2.grad)
        body_opt.step()
        cut1.backward(body_in.grad)
        client_opt.step()

    return _step_times(step, batches, warmup)


def _helper_process(
    name: str, cuts: Sequence[str] | None, batch: int, threads: int, queue: Any
) -> None:
    torch.set_num_threads(threads)
    split = _split(name, cuts, batch)
    worker = HelperWorker({"bench": split.body}, _sgd)
    server = HelperServer(worker, _bench_verifier(), address="127.0.0.1:0").start()
    queue.put(server.address)
    server.wait_clients(600)
    server.stop()


def data_plane_step_times(
    name: str,
    cuts: Sequence[str] | None,
    split: SplitModel,
    batches: list,
    warmup: int,
    threads: int,
    own_loop: bool = False,
) -> list[float]:
    """Per-step seconds with the body in a helper process over gRPC on loopback, driven by
    flsplit's own loop or (``own_loop``) by an app's loop on the remote-body module."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_helper_process, args=(name, cuts, len(batches[0][1]), threads, queue)
    )
    process.start()
    try:
        address = queue.get(timeout=300)
        head, tail = split.head, split.tail
        optimizer = _sgd(itertools.chain(head.parameters(), tail.parameters()))
        loss_fn = nn.functional.cross_entropy
        with HelperClient(
            address, "bench", _bench_verifier().token_for("bench"), deadline=120
        ) as helper:
            if own_loop:
                return _own_loop_step_times(helper, split, batches, warmup)

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                optimizer.zero_grad()
                cut1 = head(x)
                cut2 = helper.forward(cut1.detach()).requires_grad_(True)
                loss_fn(tail(cut2), y).backward()
                cut1.backward(helper.backward(cut2.grad))
                optimizer.step()

            times = _step_times(step, batches, warmup)
            helper.finish()
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    return times


def _own_loop_step_times(
    helper: HelperClient, split: SplitModel, batches: list, warmup: int
) -> list[float]:
    """An app's loop as Flower's examples write it, on the split model."""
    with RemoteBody(helper, split.head, split.tail) as body:
        net = ClientModel(split.head, split.tail, body)
        optimizer = _sgd(net.parameters())
        criterion = nn.CrossEntropyLoss()
        net.train()

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad()
            criterion(net(x), y).backward()
            optimizer.step()

        times = _step_times(step, batches, warmup)
        body.finish()
    return times


def run_case(
    name: str,
    batch: int = 32,
    steps: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    cuts: Sequence[str] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure one model; return the figures as a dict.

    The two set-ups alternate ``repeats`` times (fresh parts each time) so that drifts in
    the machine's load hit both alike; the figures are medians over all steps.
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    batches = _batches(batch, steps + warmup)
    local: list[float] = []
    remote: list[float] = []
    own: list[float] = []
    for _ in range(repeats):
        split = _split(name, cuts, batch)
        local += in_process_step_times(split, batches, warmup)
        split = _split(name, cuts, batch)
        remote += data_plane_step_times(name, cuts, split, batches, warmup, threads)
        split = _split(name, cuts, batch)
        own += data_plane_step_times(name, cuts, split, batches, warmup, threads, True)
    local_ms = statistics.median(local) * 1000
    remote_ms = statistics.median(remote) * 1000
    own_ms = statistics.median(own) * 1000
    return {
        "benchmark": "dataplane",
        "model": name,
        "cuts": list(split.cuts),
        "batch": batch,
        "input": [3, 32, 32],
        "steps": steps,
        "repeats": repeats,
        "threads": threads,
        "device": str(next(split.head.parameters()).device),
        "in_process_ms": round(local_ms, 2),
        "data_plane_ms": round(remote_ms, 2),
        "overhead_pct": round(100 * (remote_ms / local_ms - 1), 1),
        "own_loop_ms": round(own_ms, 2),
        "own_loop_overhead_pct": round(100 * (own_ms / remote_ms - 1), 1),
    }


def run_models(
    models: Sequence[str],
    batch: int,
    steps: int,
    warmup: int,
    threads: int | None,
    repeats: int = 3,
) -> int:
    """Measure every model of ``models`` and print one JSON line per model.

    Parameters
    ----------
    models
        Model names of :func:`flsplit.model.zoo.build_model`.
    batch, steps, warmup, threads, repeats
        As in :func:`run_case`.

    Returns
    -------
    int
        The exit code, 0.
    """
    for name in models:
        figures = run_case(name, batch, steps, warmup, threads, repeats=repeats)
        print(json.dumps(figures), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dataplane", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", default=["small-cnn", "resnet18"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternations of the two set-ups (default 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: torch's default)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_models(
        args.models, args.batch, args.steps, args.warmup, args.threads, args.repeats
    )


if __name__ == "__main__":
    sys.exit(main())
