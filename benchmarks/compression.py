"""Benchmark: what each data-plane codec saves in bytes, costs in time, and loses in
accuracy.

``bytes`` (default): ResNet-18 (32x32 inputs, batch 32) cut at ``layer1`` and ``fc``, as
:mod:`benchmarks.dataplane` cuts it. One batch's four tensors (the cut-1 activation up,
the body output down, its gradient up, the cut-1 gradient down) are coded with each codec
(:mod:`flsplit.runtime.codecs`) and framed as the data plane frames them
(:mod:`flsplit.runtime.wire`). Prints per codec the bytes of the batch's four frames,
float32 over them, and the time to code, frame, decode and check them (the sender's
error feedback included), as a share of one training step of the unsplit ResNet-18 on
this CPU (forward, backward and SGD step of a batch of 32), and that time minus the
time the same frames take raw (what the codec adds).

``accuracy``: runs ``flsplit simulate examples/quickstart`` for each codec (the same codec
on activations and gradients; ``A/G``: ``A`` on the activations, ``G`` on the gradients)
and seed, and prints the server-side test accuracy after
the quickstart's rounds from its ``history.json`` (of the unsplit model, and of the split
model with the activations' codec at its cuts), the mean over the seeds, and the data
plane bytes of its last round. Heavy: run it under ``flock /tmp/flsplit-heavy.lock`` on a
shared machine.

Run ``python -m benchmarks.compression bytes`` or ``python -m benchmarks.compression
accuracy`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from flsplit.config import parse_codec
from flsplit.model.splitting import resolve_cuts, split_model
from flsplit.model.zoo import build_model
from flsplit.protocol import BYTES_DOWN, BYTES_UP, DATA_PLANE_BYTES, TEST_ACC, TEST_ACC_CODED
from flsplit.runtime import codecs, wire

CODECS = ["none", "fp16", "bf16", "int8", "topk:0.1", "topk:0.1+ef", "randtopk:0.1+ef",
          "utopk:0.1"]
#: ``A/G``: codec A on the activations, G on the gradients; one spelling: both
ACCURACY_CODECS = ["none", "fp16", "bf16", "int8", "topk:0.1+ef", "none/topk:0.1+ef",
                   "none/utopk:0.1", "topk:0.1/utopk:0.1"]


def _batch_tensors(batch: int) -> list[tuple[str, torch.Tensor]]:
    """The four tensors one batch of ResNet-18 (cut at layer1, fc) sends and receives."""
    torch.manual_seed(0)
    model = build_model("resnet18")
    example = torch.randn(batch, 3, 32, 32)
    split = split_model(model, resolve_cuts(model, ("layer1", "fc"), example), example)
    cut1 = split.head(example)
    body_in = cut1.detach().requires_grad_(True)
    out = split.body(body_in)
    body_out = out.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(split.tail(body_out), torch.randint(0, 10, (batch,)))
    loss.backward()
    out.backward(body_out.grad)
    return [("fwd", cut1.detach()), ("fwd", out.detach()), ("bwd", body_out.grad),
            ("bwd", body_in.grad)]


def _step_seconds(batch: int, repeats: int) -> float:
    """Median time of one training step of the unsplit ResNet-18 on a batch."""
    torch.manual_seed(0)
    model = build_model("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _frames(tensors: list[tuple[str, torch.Tensor]], spelling: str,
            coder: codecs.Feedback) -> tuple[int, float]:
    """Bytes of the batch's frames and seconds to code, frame, decode and check them."""
    codec = parse_codec(spelling)
    total, start = 0, time.perf_counter()
    for i, (op, tensor) in enumerate(tensors):
        coded = coder.code(tensor, codec, (op, i))
        data = wire.encode(wire.Frame(op, "bench", "token", 1, coded, codec=codec))
        frame = wire.decode(data)
        assert frame.tensor.shape == tensor.shape
        total += len(data)
    return total, time.perf_counter() - start


def bytes_table(batch: int, repeats: int, codec_names: Sequence[str]) -> list[dict]:
    """One row per codec: bytes per batch, ratio to float32, codec time and its share."""
    tensors = _batch_tensors(batch)
    step = _step_seconds(batch, repeats)
    rows, raw_seconds = [], None
    for spelling in ["none", *[c for c in codec_names if c != "none"]]:
        coder = codecs.Feedback()
        _frames(tensors, spelling, coder)  # warm-up, and a residual for error feedback
        runs = [_frames(tensors, spelling, coder) for _ in range(repeats)]
        nbytes = runs[0][0]
        seconds = statistics.median(s for _, s in runs)
        if spelling == "none":
            raw_seconds, raw_bytes = seconds, nbytes
        rows.append({
            "codec": spelling,
            "bytes_per_batch": nbytes,
            "float32_over_coded": round(raw_bytes / nbytes, 2),
            "codec_ms": round(1000 * seconds, 2),
            "added_ms": round(1000 * (seconds - raw_seconds), 2),
            "share_of_step_pct": round(100 * seconds / step, 2),
            "added_share_pct": round(100 * (seconds - raw_seconds) / step, 2),
            "step_ms": round(1000 * step, 1),
        })
    return rows


def _simulate(app: Path, spelling: str, seed: int, out: Path, extra: str) -> dict:
    activations, _, gradients = spelling.partition("/")
    config = (f"compress-activations='{activations}' "
              f"compress-gradients='{gradients or activations}' "
              f"seed={seed} output-dir='{out}' {extra}").strip()
    command = [sys.executable, "-m", "flsplit.cli", "simulate", str(app), "--run-config", config]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        tail = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed:\n{tail}")
    history = json.loads((out / "history.json").read_text())
    last = max(history["server"], key=int)
    moved = history[DATA_PLANE_BYTES][max(history[DATA_PLANE_BYTES], key=int)]
    return {
        "codec": spelling, "seed": seed, "round": int(last),
        "accuracy": history["server"][last][TEST_ACC],
        # the split model with the activations' codec at its cuts (none: the same model)
        "coded_accuracy": history["server"][last].get(TEST_ACC_CODED,
                                                      history["server"][last][TEST_ACC]),
        "bytes_up": sum(b[BYTES_UP] for b in moved.values()),
        "bytes_down": sum(b[BYTES_DOWN] for b in moved.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["bytes", "accuracy"])
    parser.add_argument("--codecs", nargs="+", help="codec spellings (default: all)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--app", default="examples/quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--run-config", default="", help="more run-config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per codec (and per seed for ``accuracy``)."""
    args = build_parser().parse_args(argv)
    if args.what == "bytes":
        for row in bytes_table(args.batch, args.repeats, args.codecs or CODECS):
            print(json.dumps(row), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for spelling in args.codecs or ACCURACY_CODECS:
            accuracies = []
            for seed in args.seeds:
                out = Path(tmp) / f"{spelling.replace(':', '-').replace('/', '_')}-{seed}"
                row = _simulate(Path(args.app), spelling, seed, out, args.run_config)
                accuracies.append(row["accuracy"])
                print(json.dumps(row), flush=True)
            print(json.dumps({"codec": spelling, "mean_accuracy": statistics.mean(accuracies),
                              "seeds": args.seeds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
