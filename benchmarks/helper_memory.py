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
    parser.add_argument("--one", nargs=2, metavar=("MODE", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch, args.threads)))
        return 0
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for mode, counts in (("shared", args.shared), ("per-client", args.per_client)):
        for count in counts:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.helper_memory", "--one", mode,
                 str(count), "--batch", str(args.batch), "--threads", str(args.threads)],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                print(f"{mode} x {count}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[mode].append(row)
            print(json.dumps(row), flush=True)
    for mode in MODES:
        slope = _slope([(r["clients"], r["peak_rss_mib"]) for r in results[mode]])
        peaks = ", ".join(f"{r['clients']}: {r['peak_rss_mib']:.0f}" for r in results[mode])
        growth = f"{slope:.1f} MiB per client" if slope is not None else "-"
        print(f"{mode:<10} peak RSS MiB by clients {{{peaks}}}; growth {growth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
