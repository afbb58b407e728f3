"""Offline non-IID experiment: fixed local batches vs global sampling, with stragglers.

scikit-learn's digits (the offline data of :mod:`flsplit.model.data`: the same seeded 20% test
set, the rest as the training pool) is split over 20 clients with 2 classes each
(pathological partitioning: Flower Datasets' ``PathologicalPartitioner`` with
``class_assignment_mode="first-deterministic"`` on the in-memory pool when
``flwr-datasets`` is installed, else :func:`flsplit.model.data.pathological_partition`,
the same algorithm; :func:`flsplit.model.data.partition` picks). The quickstart's CNN is
split into head, body and tail and trained in one process with
:class:`benchmarks.syncstep.SynchronousStep` (one shared body, labels stay with their
client, each step equal to a centralised step on its global batch) for the same number
of steps under each sampler of :mod:`flsplit.plan.sampling.samplers`:

- ``fixed-local``: every client its local batch each step (``--local-batch``, default
  ``batch // clients`` so a step with all clients has about the global batch);
- ``uniform``: uniform global sampling, global batch ``--batch``;
- ``dirichlet``: latent Dirichlet sampling without straggler weight;
- ``dirichlet+stragglers``: latent Dirichlet sampling whose mean lowers the stragglers'
  share (``--straggler-weight``).

A quarter of the clients (``--straggler-fraction``) are stragglers, ``--slowdown`` (4x)
slower per sample. The emulated time of a step is the slowest participating client's
``samples x per-sample cost`` (:func:`flsplit.plan.sampling.samplers.step_times`; clients
compute in parallel, helper and network time left out); it is reported with and
without stragglers. Test accuracy is printed after every epoch, where an epoch is the
number of steps uniform sampling needs for one pass over the pool, for every sampler
alike (equal numbers of steps).

Run: ``python -m benchmarks.sampling_experiment`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flsplit.model.data import partition
from flsplit.plan.sampling.samplers import Sampler, make_sampler, step_times

CUTS = ("conv2", "fc2")
RUNS = ("fixed-local", "uniform", "dirichlet", "dirichlet+stragglers")


@dataclass
class RunResult:
    """One sampler's training run."""

    name: str
    accuracy: list[float]
    time: float
    time_stragglers: float
    mean_batch: float
    mean_clients: float


class _Streams:
    """Each client's samples in shuffled local passes, drawn without replacement."""

    def __init__(self, parts: list[np.ndarray], seed: int) -> None:
        self.parts = parts
        self.rng = np.random.default_rng(seed)
        self.order = [self.rng.permutation(p) for p in parts]
        self.pos = [0] * len(parts)

    def take(self, client: int, n: int) -> np.ndarray:
        out: list[np.ndarray] = []
        while n > 0:
            if self.pos[client] == len(self.order[client]):
                self.order[client] = self.rng.permutation(self.parts[client])
                self.pos[client] = 0
            chunk = self.order[client][self.pos[client] : self.pos[client] + n]
            self.pos[client] += len(chunk)
            n -= len(chunk)
            out.append(chunk)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_run(
    counts: np.ndarray,
    parts: list[np.ndarray],
    data: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    steps_per_epoch: int,
    lr: float,
    momentum: float,
    seed: int,
) -> list[float]:
    """Train the split quickstart CNN on the given step compositions.

    Parameters
    ----------
    counts : np.ndarray
        ``(steps, clients)`` samples per client and step.
    parts : list of np.ndarray
        Indices into ``data`` of every client's samples.
    data, test : tuple of np.ndarray
        Training pool and test set (images, labels).
    steps_per_epoch : int
        Test accuracy is measured after every this many steps (and after the last).
    lr, momentum : float
        SGD settings of head, body and tail.
    seed : int
        Seed of the model's initial weights and of the clients' local shuffles.

    Returns
    -------
    list of float
        Test accuracy after every ``steps_per_epoch`` steps.
    """
    import torch

    from benchmarks.syncstep import ClientParts, SynchronousStep
    from flsplit.model.splitting import split_model
    from flsplit.model.zoo import SmallCNN

    torch.manual_seed(seed)
    images, labels = (torch.from_numpy(a) for a in data)
    test_x, test_y = (torch.from_numpy(a) for a in test)
    split = split_model(SmallCNN(1, 8), CUTS, torch.zeros(2, 1, 8, 8)).train()
    client_params = [*split.head.parameters(), *split.tail.parameters()]
    shared = ClientParts(
        split.head, split.tail, torch.optim.SGD(client_params, lr=lr, momentum=momentum)
    )
    body_opt = torch.optim.SGD(split.body.parameters(), lr=lr, momentum=momentum)
    stepper = SynchronousStep(split.body, body_opt)
    clients = range(len(parts))
    streams = _Streams(parts, seed)
    accuracy: list[float] = []
    for s, row in enumerate(counts):
        batches = {}
        for k in clients:
            if row[k] > 0:
                idx = torch.from_numpy(streams.take(k, int(row[k])))
                batches[k] = (images[idx], labels[idx])
        stepper.step(dict.fromkeys(batches, shared), batches)
        if (s + 1) % steps_per_epoch == 0 or s + 1 == len(counts):
            split.eval()
            with torch.no_grad():
                pred = split.forward(test_x).argmax(dim=1)
            split.train()
            accuracy.append(float((pred == test_y).float().mean()))
    return accuracy


def _samplers(args: argparse.Namespace, sizes: np.ndarray, costs: np.ndarray, seed: int):
    local = args.local_batch or max(1, args.batch // args.clients)
    return {
        "fixed-local": make_sampler("fixed-local", sizes, local, seed),
        "uniform": make_sampler("uniform", sizes, args.batch, seed),
        "dirichlet": make_sampler(
            "dirichlet", sizes, args.batch, seed, concentration=args.concentration
        ),
        "dirichlet+stragglers": make_sampler(
            "dirichlet",
            sizes,
            args.batch,
            seed,
            concentration=args.concentration,
            costs=costs,
            straggler_weight=args.straggler_weight,
        ),
    }


def run(args: argparse.Namespace) -> dict:
    """Run the experiment for every seed; print per-epoch accuracy and times.

    Returns
    -------
    dict
        Settings, per-seed results and the means over seeds (also printed).
    """
    import torch

    from flsplit.model.data import _pool_and_test, digits

    torch.set_num_threads(args.threads)
    images, labels = digits()
    pool, test_idx = _pool_and_test()
    data = (images[pool], labels[pool])
    test = (images[test_idx], labels[test_idx])
    steps_per_epoch = math.ceil(len(pool) / args.batch)
    total_steps = steps_per_epoch * args.epochs
    results: dict[str, list[RunResult]] = {r: [] for r in RUNS}
    setup: dict = {}
    for seed in range(args.seed, args.seed + args.seeds):
        parts, how = partition(data[1], args.clients, args.classes_per_client, seed)
        sizes = np.array([len(p) for p in parts])
        rng = np.random.default_rng(seed)
        costs = np.ones(args.clients)
        slow = rng.choice(
            args.clients, round(args.straggler_fraction * args.clients), replace=False
        )
        costs[slow] = args.slowdown
        setup = {"partitioner": how, "sizes": sizes.tolist(), "stragglers": sorted(slow.tolist())}
        samplers: dict[str, Sampler] = _samplers(args, sizes, costs, seed)
        for name, sampler in samplers.items():
            counts = sampler.steps(total_steps)
            started = time.perf_counter()
            acc = train_run(
                counts,
                parts,
                data,
                test,
                steps_per_epoch,
                args.lr,
                args.momentum,
                seed,
            )
            results[name].append(
                RunResult(
                    name=name,
                    accuracy=acc,
                    time=float(step_times(counts, np.ones(args.clients)).sum()),
                    time_stragglers=float(step_times(counts, costs).sum()),
                    mean_batch=float(counts.sum(axis=1).mean()),
                    mean_clients=float((counts > 0).sum(axis=1).mean()),
                )
            )
            if args.verbose:
                print(
                    f"seed {seed} {name}: {time.perf_counter() - started:.1f}s wall, "
                    f"final accuracy {acc[-1]:.3f}",
                    file=sys.stderr,
                )
    summary = _summarise(results)
    _print(args, setup, steps_per_epoch, summary)
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
        "setup_last_seed": setup,
        "steps_per_epoch": steps_per_epoch,
        "summary": summary,
        "runs": {k: [vars(r) for r in v] for k, v in results.items()},
    }


def _summarise(results: dict[str, list[RunResult]]) -> dict[str, dict]:
    out = {}
    for name, runs in results.items():
        acc = np.mean([r.accuracy for r in runs], axis=0)
        out[name] = {
            "accuracy": acc.tolist(),
            "final_accuracy": float(acc[-1]),
            "last3_accuracy": float(acc[-3:].mean()),
            "mean_accuracy": float(acc.mean()),
            "min_accuracy": float(acc.min()),
            "time": float(np.mean([r.time for r in runs])),
            "time_stragglers": float(np.mean([r.time_stragglers for r in runs])),
            "mean_batch": float(np.mean([r.mean_batch for r in runs])),
            "mean_clients": float(np.mean([r.mean_clients for r in runs])),
        }
    return out


def _print(args: argparse.Namespace, setup: dict, steps_per_epoch: int, summary: dict) -> None:
    print(
        f"digits, {args.clients} clients x {args.classes_per_client} classes "
        f"({setup['partitioner']}), sizes of the last seed {setup['sizes']}"
    )
    print(
        f"global batch {args.batch}, {steps_per_epoch} steps per epoch, {args.epochs} epochs, "
        f"{args.seeds} seed(s); stragglers {args.straggler_fraction:.0%} x{args.slowdown:g}; "
        f"dirichlet concentration {args.concentration:g}, straggler weight "
        f"{args.straggler_weight:g}"
    )
    print("test accuracy (mean over seeds) after each epoch:")
    print("epoch " + " ".join(f"{r:>21}" for r in RUNS))
    for e in range(len(summary[RUNS[0]]["accuracy"])):
        print(f"{e + 1:>5} " + " ".join(f"{summary[r]['accuracy'][e]:>21.3f}" for r in RUNS))
    print("emulated training time (sum over steps of the slowest participant, units of one")
    print("sample on a normal client):")
    uniform = summary["uniform"]
    for r in RUNS:
        s = summary[r]
        print(
            f"{r:>21}: no stragglers {s['time']:8.0f}  with stragglers "
            f"{s['time_stragglers']:8.0f} ({s['time_stragglers'] / uniform['time_stragglers']:.2f}"
            f" x uniform)  final acc {s['final_accuracy']:.3f}  last-3 mean "
            f"{s['last3_accuracy']:.3f}  mean over epochs {s['mean_accuracy']:.3f}  "
            f"worst epoch {s['min_accuracy']:.3f}  mean batch {s['mean_batch']:.1f}  "
            f"mean clients/step {s['mean_clients']:.1f}"
        )


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the experiment's options to ``parser`` (or a new one) and return it."""
    parser = parser or argparse.ArgumentParser(
        prog="python -m benchmarks.sampling_experiment", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--classes-per-client", type=int, default=2)
    parser.add_argument("--batch", type=int, default=40, help="global batch size")
    parser.add_argument(
        "--local-batch", type=int, default=0, help="fixed-local batch (0: batch // clients)"
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3, help="repetitions (seeds seed..)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--concentration", type=float, default=1000.0)
    parser.add_argument("--straggler-weight", type=float, default=1.0)
    parser.add_argument("--straggler-fraction", type=float, default=0.25)
    parser.add_argument("--slowdown", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="", help="write all results as JSON here")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment from the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    result = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
