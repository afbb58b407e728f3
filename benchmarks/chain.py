"""Helper chains: per-helper peak memory and emulated epoch time for 1, 2, 3 hops.

``memory``: torchvision's VGG-19 (10 classes) body between ``features.5`` and
``classifier`` (the setting of :mod:`benchmarks.helper_memory`), cut into ``h``
pieces for ``h`` hops as run config ``chain-cuts = "auto"`` does: block-level cuts that
balance the memory a client's piece needs on its helper (three times its parameters for
weights, gradients and momentum, plus the activations autograd keeps at batch 32;
:func:`flsplit.model.chain_cuts.piece_memory_bytes`). ``N`` clients are served by ``h`` helpers,
each in its own process, a ``"per-client"`` :class:`~flsplit.runtime.worker.HelperWorker`
holding one copy per client piece it serves, in one of two layouts (``--layout``):

``rotated``
    what the strategy does (:meth:`SplitStrategy.assign_chains`): client ``i``'s chain
    starts at helper ``i``, so each helper runs every piece position for a share of the
    clients (:func:`rotated_pieces`);
``fixed``
    helper ``j`` runs piece ``j + 1`` of every client: the largest piece bounds it.

Each helper is driven by a load generator: ``N`` clients' forwards first (all in flight
at once), then their backwards, twice, so that the second pass is the steady state of
training: every copy holds its gradients and momentum from its first step while all
clients' autograd graphs are alive. Reported per helper: peak RSS while serving (kernel
peak mark reset after the model is built), RSS before serving, and the worker's held
bytes with every client in flight in the second pass (parameters, gradients, optimizer
state, pending inputs and outputs; the autograd graph is not included). RSS includes the
process with torch and torchvision loaded (read right after importing them and reported
as ``torch_rss_mib``); ``above_torch_mib`` is the peak above it: the body copies, their
gradients and momentum, the autograd graphs and what the allocator kept from building
and splitting the model.

``epoch``: one client's epoch through a chain of ``h`` helpers, every helper in its own
process serving over the real gRPC data plane, with emulated devices and links
(:class:`~flsplit.runtime.emulation.Emulation`): a slow client on a slow link to the
first helper, faster helpers, fast helper-helper links, micro-batches pipelined. A link
carries one transfer at a time in each direction.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

OUTER = ("features.5", "classifier")


# --------------------------------------------------------------------------- memory


def _vgg19() -> Any:
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg19(num_classes=10)


def balanced_vgg_cuts(hops: int, image_size: int = 32, batch: int = 32) -> tuple[str, ...]:
    """All cuts (outer and inner) of a ``hops``-piece VGG-19 body, chosen as run config
    ``chain-cuts = "auto"`` chooses them (balanced helper memory per client)."""
    import torch

    from flsplit.model.chain_cuts import ChainSettings, chain_cut_names

    example = torch.randn(2, 3, image_size, image_size)
    return chain_cut_names(_vgg19(), example, OUTER, ChainSettings(length=hops),
                           batch_size=batch)


LAYOUTS: tuple[str, ...] = ("rotated", "fixed")


def rotated_pieces(hops: int, clients: int, helper: int) -> list[int]:
    """Piece (1-based) that ``helper`` runs for each of ``clients`` clients when chains of
    ``hops`` helpers are assigned round-robin over ``hops`` helpers, as
    :meth:`SplitStrategy.assign_chains` does in round 1: client ``i``'s chain is helpers
    ``i, i + 1, ...`` (mod ``hops``), so helper ``j`` is at position ``(j - i) mod hops``."""
    return [(helper - i) % hops + 1 for i in range(clients)]


def layout_pieces(layout: str, hops: int, clients: int, helper: int) -> list[int]:
    """Per client, the piece ``helper`` runs in ``layout`` (see the module docstring)."""
    if layout == "rotated":
        return rotated_pieces(hops, clients, helper)
    if layout == "fixed":
        return [helper + 1] * clients
    raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")


def measure_helper(
    cuts: Sequence[str], pieces: Sequence[int], batch: int = 32, threads: int = 2
) -> dict[str, Any]:
    """Serve one in-flight copy of piece ``pieces[i]`` for every client ``i`` in this
    process (a helper of the chain layout)."""
    import copy
    import gc

    import torch
    import torchvision  # noqa: F401  (loaded before the torch baseline is read)

    from benchmarks.helper_memory import (
        _reset_peak,
        _status_mib,
        serve_in_flight,
    )
    from flsplit.model.splitting import split_model
    from flsplit.runtime.memory import peak_rss_mib
    from flsplit.runtime.worker import HelperWorker

    torch.set_num_threads(threads)
    torch_rss = _status_mib("VmRSS") or 0.0
    model = _vgg19()
    example = torch.randn(2, 3, 32, 32)
    split = split_model(model, tuple(cuts), example)
    in_shapes, protos = {}, {}
    served = set(pieces)
    with torch.no_grad():
        x = example
        for piece, part in enumerate(split.parts[:-1]):
            if piece in served:
                in_shapes[piece], protos[piece] = tuple(x.shape[1:]), part
            x = part(x)
    params = sum(p.numel() for piece in pieces for p in protos[piece].parameters())  # all copies
    del model, split, example, x
    gc.collect()

    def sgd(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)

    names = [f"client-{i}" for i in range(len(pieces))]
    worker = HelperWorker(
        {n: copy.deepcopy(protos[p]) for n, p in zip(names, pieces, strict=True)}, sgd
    )
    del protos
    gc.collect()
    reset = _reset_peak()
    baseline = _status_mib("VmRSS") or peak_rss_mib()
    start = time.perf_counter()
    held = 0.0
    for _ in range(2):  # the second pass runs with every copy's gradients and momentum
        held = serve_in_flight(
            worker, {n: (batch, *in_shapes[p]) for n, p in zip(names, pieces, strict=True)}
        )
    seconds = time.perf_counter() - start
    worker.stop()
    peak = (_status_mib("VmHWM") if reset else None) or peak_rss_mib()
    return {
        "hops": len(cuts) - 1,
        "pieces": {str(p): list(pieces).count(p) for p in sorted(set(pieces))},
        "copies_params_m": round(params / 1e6, 2),
        "clients": len(pieces),
        "torch_rss_mib": round(torch_rss, 1),
        "before_serving_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak, 1),
        "above_torch_mib": round(peak - torch_rss, 1),
        "held_mib": round(held, 1),
        "seconds": round(seconds, 1),
    }


def run_memory(hops: Sequence[int], clients: int, batch: int, threads: int,
               mmap_threshold: int = 0, layouts: Sequence[str] = LAYOUTS) -> list[dict]:
    """Measure every helper of every hop count and layout, each in its own process; print
    figures.

    ``mmap_threshold`` > 0 starts each process with ``MALLOC_MMAP_THRESHOLD_`` set to it
    (glibc): tensors above that size are mapped and unmapped on their own instead of
    coming from heap arenas that grow and are not given back.
    """
    env = dict(os.environ)
    if mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    rows: list[dict] = []
    runs = [(h, layout) for h in hops for layout in (layouts if h > 1 else layouts[:1])]
    for h, layout in runs:
        cuts = balanced_vgg_cuts(h, batch=batch)
        for helper in range(h):
            pieces = layout_pieces(layout, h, clients, helper)
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.chain", "--one-helper",
                 ",".join(cuts), ",".join(map(str, pieces)), "--batch", str(batch),
                 "--threads", str(threads)],
                capture_output=True, text=True, check=False, env=env,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{h} hops ({layout}), helper {helper} failed:\n"
                                   f"{proc.stderr[-2000:]}")
            row = {"layout": layout if h > 1 else "one hop", "helper": helper,
                   **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = ("peak_rss_mib", "above_torch_mib", "held_mib")
    base = None
    for h, layout in runs:
        mine = [r for r in rows if r["hops"] == h and r["layout"] in (layout, "one hop")]
        worst = {k: max(r[k] for r in mine) for k in keys}
        if h == 1:
            base = worst
        line = (f"{h} hop(s){f' {layout}' if h > 1 else ''}, {clients} clients: max "
                f"per-helper peak RSS {worst['peak_rss_mib']:.0f} MiB, above torch (peak - "
                f"RSS with torch loaded) {worst['above_torch_mib']:.0f} MiB, held "
                f"{worst['held_mib']:.0f} MiB")
        if base is not None and h != 1:
            line += " | fall vs 1 hop: " + ", ".join(
                f"{k.removesuffix('_mib')} {base[k] / worst[k]:.2f}x" for k in keys
            )
        print(line, flush=True)
    return rows


# --------------------------------------------------------------------------- epoch


class EpochModel:
    """An MLP whose middle (the body) is ``layers`` square layers: head ``fc0``, tail
    ``out``."""

    @staticmethod
    def build(width: int, layers: int) -> Any:
        from collections import OrderedDict

        import torch
        from torch import nn

        torch.manual_seed(0)
        modules: OrderedDict[str, nn.Module] = OrderedDict(fc0=nn.Linear(64, width), act0=nn.ReLU())
        for i in range(1, layers + 1):
            modules[f"fc{i}"] = nn.Linear(width, width)
            modules[f"act{i}"] = nn.ReLU()
        modules["out"] = nn.Linear(width, 10)
        return nn.Sequential(modules)

    @staticmethod
    def cuts(layers: int, hops: int) -> tuple[str, ...]:
        bounds = [1 + round(i * layers / hops) for i in range(hops)]
        return (*(f"fc{b}" for b in bounds), "out")


def _serve_piece(spec: dict[str, Any], conn: Any) -> None:
    """Child process: serve one piece of the epoch model until its client finishes."""
    import torch

    from flsplit.model.splitting import split_model
    from flsplit.runtime.auth import TokenVerifier
    from flsplit.runtime.dataplane import HelperClient, HelperServer
    from flsplit.runtime.emulation import Emulation
    from flsplit.runtime.worker import HelperWorker

    torch.set_num_threads(1)
    model = EpochModel.build(spec["width"], spec["layers"])
    split = split_model(model, tuple(spec["cuts"]), torch.zeros(2, 64))
    piece = split.parts[spec["piece"]]
    worker = HelperWorker(
        {"c": piece},
        lambda p: torch.optim.SGD(p, lr=0.01),
        emulation=Emulation(compute_factor=spec["helper_factor"]),
    )
    hops = {}
    if spec["next"]:
        hops = {"c": HelperClient(spec["next"], "c", spec["next_token"], deadline=120)}
    server = HelperServer(
        worker,
        TokenVerifier(bytes.fromhex(spec["key"]), 1, 1, spec["helper"], ["c"]),
        next_hops=hops,
        link=Emulation(rate_mbps=spec["hop_mbps"], latency_ms=spec["hop_latency_ms"]),
        in_flight=spec["micro"] + 1,
    ).start()
    conn.send(server.address)
    server.wait_clients(600)
    server.stop()
    conn.send("done")


def epoch_time(hops: int, args: argparse.Namespace) -> float:
    """Seconds of one client's emulated epoch through a chain of ``hops`` helpers."""
    import itertools

    import torch
    from torch import nn

    from flsplit.model.splitting import split_model
    from flsplit.runtime.auth import helper_key, sign_token
    from flsplit.runtime.dataplane import HelperClient
    from flsplit.runtime.emulation import Emulation
    from flsplit.runtime.trainer import train_split

    secret = b"\x01" * 32
    cuts = EpochModel.cuts(args.layers, hops)
    context = multiprocessing.get_context("spawn")
    children, address = [], ""
    for piece in range(hops, 0, -1):  # last hop first: each needs the next one's address
        helper = 100 + piece
        nxt = 100 + piece + 1
        parent, child = context.Pipe()
        spec = {
            "width": args.width, "layers": args.layers, "cuts": cuts, "piece": piece,
            "helper": helper, "key": helper_key(secret, 1, helper).hex(),
            "next": address,
            "next_token": sign_token(helper_key(secret, 1, nxt), 1, 1, "c", nxt),
            "helper_factor": args.helper_factor, "hop_mbps": args.hop_mbps,
            "hop_latency_ms": args.hop_latency_ms, "micro": args.micro_batches,
        }
        proc = context.Process(target=_serve_piece, args=(spec, child), daemon=True)
        proc.start()
        if not parent.poll(120):
            raise RuntimeError(f"helper process for piece {piece} did not start")
        address = parent.recv()
        children.append((proc, parent))
    torch.set_num_threads(1)
    split = split_model(EpochModel.build(args.width, args.layers), cuts, torch.zeros(2, 64))
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(args.epoch_batch, 64, generator=gen),
             torch.randint(0, 10, (args.epoch_batch,), generator=gen))
            for _ in range(args.batches)]
    optimizer = torch.optim.SGD(
        itertools.chain(split.head.parameters(), split.tail.parameters()), lr=0.01
    )
    emulation = Emulation(args.client_factor, args.client_mbps, args.client_latency_ms)
    token = sign_token(helper_key(secret, 1, 101), 1, 1, "c", 101)
    with HelperClient(address, "c", token, deadline=120) as helper:
        result = train_split(
            split.head, split.tail, helper, data, nn.functional.cross_entropy, optimizer,
            emulation=emulation, micro_batches=args.micro_batches,
        )
    for proc, parent in children:
        parent.poll(30)
        proc.join(30)
    return result.wall_seconds


def run_epoch(hops: Sequence[int], args: argparse.Namespace) -> dict[int, float]:
    """Alternate the hop counts ``args.repeats`` times; print the median epoch times."""
    times: dict[int, list[float]] = {h: [] for h in hops}
    for _ in range(args.repeats):
        for h in hops:
            times[h].append(epoch_time(h, args))
            print(json.dumps({"hops": h, "epoch_seconds": round(times[h][-1], 3)}), flush=True)
    medians = {h: statistics.median(v) for h, v in times.items()}
    for h in hops:
        extra = f" ({100 * (medians[h] / medians[hops[0]] - 1):+.1f}% vs {hops[0]} hop)"
        print(f"{h} hop(s): median epoch {medians[h]:.2f} s{extra if h != hops[0] else ''}")
    return medians


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("what", nargs="?", choices=("memory", "epoch", "both"), default="both")
    parser.add_argument("--hops", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--clients", type=int, default=12, help="memory: clients in flight")
    parser.add_argument("--batch", type=int, default=32, help="memory: batch size")
    parser.add_argument("--epoch-batch", type=int, default=64, help="epoch: batch size")
    parser.add_argument("--threads", type=int, default=2, help="memory: torch threads")
    parser.add_argument("--mmap-threshold", type=int, default=131072,
                        help="memory: glibc MALLOC_MMAP_THRESHOLD_ of the helper processes "
                        "(bytes; 0 leaves glibc's adaptive default)")
    parser.add_argument("--micro-batches", type=int, default=4, help="epoch: per batch")
    parser.add_argument("--batches", type=int, default=12, help="epoch: batches")
    parser.add_argument("--width", type=int, default=1024, help="epoch: MLP width")
    parser.add_argument("--layers", type=int, default=6, help="epoch: body layers")
    parser.add_argument("--client-factor", type=float, default=4.0)
    parser.add_argument("--client-mbps", type=float, default=20.0)
    parser.add_argument("--client-latency-ms", type=float, default=2.0)
    parser.add_argument("--helper-factor", type=float, default=2.0)
    parser.add_argument("--hop-mbps", type=float, default=1000.0)
    parser.add_argument("--hop-latency-ms", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="epoch: alternations")
    parser.add_argument("--layout", choices=(*LAYOUTS, "both"), default="both",
                        help="memory: which helper runs which piece of a client's chain "
                        "(rotated: as the strategy assigns chains; fixed: helper j runs "
                        "piece j + 1 of every client)")
    parser.add_argument("--one-helper", nargs=2, metavar=("CUTS", "PIECES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_helper:
        cuts, pieces = args.one_helper
        row = measure_helper(cuts.split(","), [int(p) for p in pieces.split(",")],
                             args.batch, args.threads)
        print(json.dumps(row))
        return 0
    hops = sorted(set(args.hops))
    if any(h < 1 for h in hops):
        parser.error(f"--hops {hops}: every hop count must be at least 1")
    if args.what in ("memory", "both"):
        layouts = LAYOUTS if args.layout == "both" else (args.layout,)
        run_memory(hops, args.clients, args.batch, args.threads, args.mmap_threshold, layouts)
    if args.what in ("epoch", "both"):
        run_epoch(hops, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
