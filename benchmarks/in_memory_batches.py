"""In-memory train batches against the per-example grain pipeline, in the same run.

    python benchmarks/in_memory_batches.py [--threads 1 4] [--batches 100]

On MNIST-5k (the quickstart's data, 28x28 grey, batches of 64), both paths of
`transfusion_jax.data.train_dataset` (``data.in_memory_mb`` at its default, and 0 for the
per-example pipeline, which gives the same batches):

- examples/s of the batch iterator alone, for each ``--threads`` count (warm-up batch
  excluded);
- examples/s of one quickstart run trained on each (`grid_throughput.sequential`: two runs
  one after another, fed by their iterator; ``--train-batch``, ``--steps``), the rounds
  alternating between the paths so that other load hits both alike.

Writes ``benchmarks/results/in_memory_batches.json`` (``--out``) with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from grid_throughput import ROOT, quickstart_config, sequential

from transfusion_jax.data import train_dataset, train_iterator
from transfusion_jax.train.setup import build_run

PATHS = {"in memory": 512.0, "per example": 0.0}


def iterator_rate(config, threads: int, batches: int) -> float:
    """Examples/s of the train-batch iterator with ``threads`` reader threads."""
    source = build_run(config).train_source
    iterator = train_iterator(train_dataset(source, config.data, 64, seed=0), threads)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * 64 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/in_memory_batches.json"))
    args = parser.parse_args()
    data_dir = str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    model = argparse.Namespace(model="cbr_tiny", width=0.25, conv_impl="auto",
                               batch=args.train_batch, steps=args.steps, image_size=0)

    def config(mb: float):
        c = quickstart_config(model, data_dir)
        c.data.in_memory_mb = mb
        return c

    result = {"load_average_before": os.getloadavg(), "iterator": {}, "training": {}}
    for threads in args.threads:
        rates = {name: iterator_rate(config(mb), threads, args.batches)
                 for name, mb in PATHS.items()}
        result["iterator"][threads] = rates
        print(f"iterator, {threads} thread(s): " + ", ".join(
            f"{name} {rate:,.0f} ex/s" for name, rate in rates.items())
            + f"; in memory / per example {rates['in memory'] / rates['per example']:.1f}x",
            flush=True)
    fed = {name: [] for name in PATHS}
    for _ in range(args.rounds):
        for name, mb in PATHS.items():
            fed[name].append(sequential(config(mb), 2, args.steps)[0])
    result["training"] = fed
    best = {name: max(rates) for name, rates in fed.items()}
    print("one quickstart run trained, fed (best of rounds): " + ", ".join(
        f"{name} {rate:,.0f} ex/s" for name, rate in best.items())
        + f"; in memory / per example {best['in memory'] / best['per example']:.2f}x")
    result["load_average_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
