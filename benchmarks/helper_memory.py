"""Helper peak memory per memory mode: a load generator standing in for many clients.

``python -m benchmarks.helper_memory`` builds the body of torchvision's VGG-19 (10
classes) cut after its first convolution block (``features.5``) and before the classifier
(``classifier``), the published CIFAR-10 setting, and drives a
:class:`~flsplit.runtime.worker.HelperWorker` the way the worst case of a round does: every
client sends its forward (a batch of cut-1 activations, ``batch x 64 x 16 x 16`` for
32x32 inputs) before any backward arrives, so all clients are in flight at once; then
every client sends its backward. Each client runs one forward and one backward.

Every configuration runs in its own process. ``peak_rss_mib`` is the peak resident
memory while serving (the worker built, torch loaded): the kernel's peak mark is reset
after the model is built and split (Linux ``/proc/self/clear_refs``) and read from
``VmHWM``; elsewhere it is ``resource.getrusage``'s peak of the whole process, which is
also reported as ``process_peak_rss_mib``. ``shared`` mode runs for the ``--shared``
client counts, ``per-client`` mode for the ``--per-client`` counts; the growth per client
is the least-squares slope of peak RSS over the client count. The optimizer is SGD with
momentum 0.9 (per-client mode keeps one momentum buffer per client, shared mode one).

``--frozen`` measures a model fine-tuned through adapters instead
(:class:`flsplit.model.zoo.AdaptedMLP`, ``--width`` wide, ``--depth`` hidden layers in the
body, each a frozen ``Linear`` base with a rank-8 adapter), through the helper's own
body building (:func:`flsplit.client.helper_role._build_bodies`, the frozen base cached
in the node's ``Context.state``): ``shared`` mode, ``per-client`` mode (the bodies share
the frozen tensors) and ``per-client-copies`` (every body its own copy of the base, as
before frozen tensors were shared), for the ``--clients`` counts (default 1 and 20). The
peak mark is reset once the train message's tensors are in memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from flsplit.runtime.memory import peak_rss_mib

MODES = ("shared", "per-client")
#: ``--frozen``: per-client bodies sharing the frozen base, or each with its own copy.
FROZEN_MODES = ("shared", "per-client", "per-client-copies")


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB, if available."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5) so that building the
    model does not count; ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_mib("VmHWM") is not None


def serve_in_flight(worker: Any, input_shapes: dict[str, tuple[int, ...]]) -> float:
    """Load generator: every client's forward (random input of its shape) in flight at
    once, then every backward; return the worker's held MiB with all forwards pending.

    The clients' side keeps nothing: each reply is dropped once read (a real helper
    sends it and frees it), so the figures are the helper's own.
    """
    import torch

    futures = [worker.submit(n, "fwd", torch.rand(shape)) for n, shape in input_shapes.items()]
    out_shapes = []
    for i, future in enumerate(futures):
        out_shapes.append(tuple(future.result(timeout=3600).shape))
        futures[i] = None
    held = worker.held_bytes() / 2**20
    futures = [worker.submit(n, "bwd", torch.randn(shape))
               for n, shape in zip(input_shapes, out_shapes, strict=True)]
    for i, future in enumerate(futures):
        future.result(timeout=3600)
        futures[i] = None
    return held


def measure(mode: str, clients: int, batch: int = 32, threads: int = 2,
            image_size: int = 32) -> dict[str, Any]:
    """Run one configuration in this process and return its figures.

    Parameters
    ----------
    mode
        ``"shared"`` or ``"per-client"``.
    clients
        Number of clients in flight at once.
    batch, image_size
        Batch size and input height/width of the clients' data.
    threads
        Torch intra-op threads.

    Returns
    -------
    dict
        ``mode``, ``clients``, ``baseline_rss_mib`` (after building the worker),
        ``peak_rss_mib``, ``held_mib`` (:meth:`HelperWorker.held_bytes` with all clients
        in flight), ``seconds``.
    """
    import torch
    import torchvision

    from flsplit.model.splitting import split_model
    from flsplit.runtime.worker import HelperWorker

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.vgg19(num_classes=10)
    example = torch.randn(2, 3, image_size, image_size)
    split = split_model(model, ("features.5", "classifier"), example)
    body = split.parts[1]
    with torch.no_grad():
        act_shape = tuple(split.parts[0](example).shape[1:])
    del model, split, example
    gc.collect()  # fx graphs hold reference cycles

    def sgd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)

    names = [f"client-{i}" for i in range(clients)]
    if mode == "shared":
        worker = HelperWorker.shared(body, names, sgd)
    elif mode == "per-client":
        worker = HelperWorker.replicated(body, names, sgd)
        del body
    else:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    gc.collect()
    reset = _reset_peak()
    baseline = _status_mib("VmRSS") or peak_rss_mib()
    start = time.perf_counter()
    held = serve_in_flight(worker, {n: (batch, *act_shape) for n in names})
    seconds = time.perf_counter() - start
    worker.stop()
    peak = (_status_mib("VmHWM") if reset else None) or peak_rss_mib()
    return {"mode": mode, "clients": clients, "batch": batch,
            "baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak, 1),
            "peak_source": "VmHWM after reset" if reset else "getrusage",
            "process_peak_rss_mib": round(peak_rss_mib(), 1),
            "held_mib": round(held, 1), "seconds": round(seconds, 1)}


def measure_frozen(mode: str, clients: int, width: int = 1024, depth: int = 8,
                   batch: int = 32, threads: int = 2) -> dict[str, Any]:
    """One frozen-base configuration in this process (``mode``: ``shared``,
    ``per-client`` or ``per-client-copies``); figures as :func:`measure` returns, with the
    body's frozen and trainable MiB."""
    import torch
    from flwr.app import ArrayRecord, Context, RecordDict

    from flsplit.client.base_cache import part_state
    from flsplit.client.helper_role import _build_bodies
    from flsplit.client.records import load_part
    from flsplit.config import RunConfig
    from flsplit.model.zoo import AdaptedMLP
    from flsplit.protocol import ServedClient
    from flsplit.runtime.worker import HelperWorker
    from flsplit.task import SplitTask

    torch.set_num_threads(threads)
    cuts = "hidden0,norm"

    def model_fn(config: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        return AdaptedMLP(inputs=width, width=width, rank=8, depth=depth)

    task = SplitTask(model_fn=model_fn, load_data=lambda *a: ([], []),
                     example_input=lambda config: torch.zeros(2, width))
    config = RunConfig.parse({"helper-memory": "shared" if mode == "shared" else "per-client",
                              "cuts": cuts})
    model = model_fn({})
    body_keys = [k for k in model.state_dict() if k.startswith("hidden")]
    message = ArrayRecord({k: v for k, v in model.state_dict().items() if k in body_keys})
    frozen_mib = sum(p.numel() * 4 for n, p in model.named_parameters()
                     if n in body_keys and not p.requires_grad) / 2**20
    trainable_mib = sum(p.numel() * 4 for n, p in model.named_parameters()
                        if n in body_keys and p.requires_grad) / 2**20
    task.split(config.as_dict())  # traced once per process, as on a helper after round 1
    del model
    gc.collect()
    reset = _reset_peak()
    context, shared = Context(1, 11, {}, RecordDict(), {}), {}

    def load(body: torch.nn.Module) -> None:
        if mode == "per-client-copies":
            weights = part_state(context, (body,), message, "base")
            load_part(body, weights.state)
        else:
            weights = part_state(context, (body,), message, "base", shared)
            load_part(body, weights.state, assign=weights.frozen)

    names = [f"client-{i}" for i in range(clients)]
    bodies, _ = _build_bodies(task, config, torch.zeros(2, width),
                              [ServedClient(n, cuts, 1) for n in names], load)
    gc.collect()
    baseline = _status_mib("VmRSS") or peak_rss_mib()
    worker = HelperWorker(
        bodies, lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        memory_mode=config.helper_memory,
    )
    start = time.perf_counter()
    held = serve_in_flight(worker, dict.fromkeys(names, (batch, width)))
    seconds = time.perf_counter() - start
    worker.stop()
    peak = (_status_mib("VmHWM") if reset else None) or peak_rss_mib()
    return {"mode": mode, "clients": clients, "batch": batch,
            "body_frozen_mib": round(frozen_mib, 1),
            "body_trainable_mib": round(trainable_mib, 2),
            "baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak, 1),
            "peak_source": "VmHWM after reset" if reset else "getrusage",
            "held_mib": round(held, 1), "seconds": round(seconds, 1)}


def _slope(points: Sequence[tuple[int, float]]) -> float | None:
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    num = sum((n - mean_n) * (y - mean_y) for n, y in points)
    den = sum((n - mean_n) ** 2 for n, _ in points)
    return num / den


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.helper_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", nargs="*", type=int, default=[1, 8, 100],
                        help="client counts for shared mode (default %(default)s)")
    parser.add_argument("--per-client", nargs="*", type=int, default=[1, 2, 4, 8],
                        help="client counts for per-client mode (default %(default)s)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--frozen", action="store_true",
                        help="a frozen base with adapters (AdaptedMLP) instead of VGG-19")
    parser.add_argument("--clients", nargs="*", type=int, default=[1, 20],
                        help="--frozen: client counts (default %(default)s)")
    parser.add_argument("--width", type=int, default=1024, help="--frozen: layer width")
    parser.add_argument("--depth", type=int, default=8, help="--frozen: body layers")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one and args.frozen:
        print(json.dumps(measure_frozen(args.one[0], int(args.one[1]), args.width, args.depth,
                                        args.batch, args.threads)))
        return 0
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch, args.threads)))
        return 0
    modes = FROZEN_MODES if args.frozen else MODES
    runs = (
        [(mode, args.clients) for mode in FROZEN_MODES] if args.frozen
        else [("shared", args.shared), ("per-client", args.per_client)]
    )
    extra = ["--frozen", "--width", str(args.width), "--depth", str(args.depth)]
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for mode, counts in runs:
        for count in counts:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.helper_memory", "--one", mode,
                 str(count), "--batch", str(args.batch), "--threads", str(args.threads),
                 *(extra if args.frozen else [])],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                print(f"{mode} x {count}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[mode].append(row)
            print(json.dumps(row), flush=True)
    for mode in modes:
        slope = _slope([(r["clients"], r["peak_rss_mib"]) for r in results[mode]])
        peaks = ", ".join(f"{r['clients']}: {r['peak_rss_mib']:.0f}" for r in results[mode])
        growth = f"{slope:.1f} MiB per client" if slope is not None else "-"
        print(f"{mode:<10} peak RSS MiB by clients {{{peaks}}}; growth {growth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
