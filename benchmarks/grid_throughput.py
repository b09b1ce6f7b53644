"""Runs trained together vs one after another: training throughput and a whole study.

    python benchmarks/grid_throughput.py [--runs 1 4 8 16] [--steps 40] [--study]

Measures on whatever devices JAX sees (CPU here), for the quickstart model (slim CBR-Tiny,
28x28x1, batch 64; ``--model cbr_small --width 1`` for others):

- for a grid of R runs (R = ``--runs``): examples/s of the R runs trained one after
  another (each its own input pipeline and the single-run jitted step, as a sequential
  sweep runs them) and of the same R runs trained together (R pipelines, batches stacked,
  the vmapped group step of `transfusion_jax.train.group`); compilation excluded, one
  warm-up step each;
- with ``--study``: the wall time of the whole default study
  (``configs/recipe_transfusion.py:quick``) through the command line, vectorised and
  sequential (``--config.sweep.vectorize=False``), each from an empty compilation cache,
  as a fresh clone runs it.

Writes ``benchmarks/results/grid_throughput.json`` (``--out``), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from transfusion_jax import parallel
from transfusion_jax.config import load_config
from transfusion_jax.data import train_dataset, train_iterator
from transfusion_jax.models.conv import for_stacked_runs
from transfusion_jax.train.group.step import make_group_train_step, schedule_table, stack_trees
from transfusion_jax.train.metrics import LossAccuracy
from transfusion_jax.train.setup import build_run, initial_state
from transfusion_jax.train.step import empty_metrics, make_train_step

ROOT = Path(__file__).resolve().parent.parent


def quickstart_config(args: argparse.Namespace, data_dir: str):
    config = load_config(str(ROOT / "configs" / "quickstart.py"))
    config.model.name = args.model
    config.model.options.width = args.width
    config.model.conv_impl = args.conv_impl
    config.train.batch_size = args.batch
    config.train.steps = args.steps + 1
    config.data.data_dir = data_dir
    return config


def sequential(config, num_runs: int, steps: int) -> float:
    """Examples/s of ``num_runs`` runs trained one after another (warm-up step excluded)."""
    mesh = parallel.data_mesh()
    setup = build_run(config)
    step_fn = make_train_step(setup.model, setup.tx, setup.loss_name, False, mesh)
    seconds = 0.0
    for seed in range(num_runs):
        config.seed = seed
        state = parallel.replicate(mesh, initial_state(config, setup))
        metrics = empty_metrics(mesh)
        iterator = train_iterator(train_dataset(setup.train_source, config.data,
                                                config.train.batch_size, seed),
                                  config.data.num_threads)
        state, metrics, loss = step_fn(state, metrics,
                                       parallel.make_global_batch(mesh, next(iterator)))
        jax.block_until_ready(loss)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics, loss = step_fn(state, metrics,
                                           parallel.make_global_batch(mesh, next(iterator)))
        jax.block_until_ready(loss)
        seconds += time.perf_counter() - start
    return num_runs * steps * config.train.batch_size / seconds


def together(config, num_runs: int, steps: int) -> float:
    """Examples/s of the same runs trained together (warm-up step excluded)."""
    mesh = parallel.grid_mesh(num_runs)
    setup = build_run(config)
    # As a sweep's group trains: on CPU, auto convolutions in the matmul form.
    step_fn = make_group_train_step(for_stacked_runs(setup.model), config.train,
                                    setup.loss_name, False, mesh)
    states, iterators = [], []
    for seed in range(num_runs):
        config.seed = seed
        states.append(jax.device_get(initial_state(config, setup)))
        iterators.append(train_iterator(train_dataset(setup.train_source, config.data,
                                                      config.train.batch_size, seed),
                                        max(1, config.data.num_threads // num_runs)))
    state = parallel.place_runs(mesh, stack_trees(states))
    metrics = parallel.place_runs(mesh, stack_trees([LossAccuracy.empty()] * num_runs))
    tables = parallel.place_runs(mesh, np.stack([schedule_table(config.train)] * num_runs))
    on = parallel.place_runs(mesh, np.ones(num_runs, bool))

    def one_step(state, metrics, alive):
        batch = parallel.make_run_batch(mesh, stack_trees([next(i) for i in iterators]))
        return step_fn(state, metrics, batch, tables, on, alive)

    state, metrics, loss, alive = one_step(state, metrics, on)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics, loss, alive = one_step(state, metrics, alive)
    jax.block_until_ready(loss)
    return num_runs * steps * config.train.batch_size / (time.perf_counter() - start)


def study(vectorize: bool, workdir: Path) -> float:
    """Wall seconds of the default study through the command line, empty compile cache."""
    env = {**os.environ, "TFJ_COMPILATION_CACHE": str(workdir / "jax_cache")}
    command = [sys.executable, "-m", "transfusion_jax.main",
               "--config=configs/recipe_transfusion.py:quick", f"--workdir={workdir / 'study'}",
               f"--config.sweep.vectorize={vectorize}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="cbr_tiny")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--conv-impl", default="auto", help="model.conv_impl of every run")
    parser.add_argument("--study", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/grid_throughput.json"))
    args = parser.parse_args()

    data_dir = str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    config = quickstart_config(args, data_dir)
    result = {"devices": [str(d) for d in jax.devices()], "model": args.model,
              "width": args.width, "batch": args.batch, "conv_impl": args.conv_impl,
              "steps": args.steps,
              "load_average_before": os.getloadavg(), "grid": []}
    print(f"{'runs':>5}{'one after another ex/s':>25}{'together ex/s':>16}{'speed-up':>10}")
    for num_runs in args.runs:
        alone = sequential(config.copy_and_resolve_references(), num_runs, args.steps)
        grouped = together(config.copy_and_resolve_references(), num_runs, args.steps)
        result["grid"].append({"runs": num_runs, "sequential_examples_per_s": alone,
                               "vectorized_examples_per_s": grouped,
                               "speedup": grouped / alone})
        print(f"{num_runs:>5}{alone:>25.0f}{grouped:>16.0f}{grouped / alone:>9.2f}x",
              flush=True)
    if args.study:
        with tempfile.TemporaryDirectory() as tmp:
            vectorized = study(True, Path(tmp) / "vectorized")
            alone = study(False, Path(tmp) / "sequential")
        result["study"] = {"config": "configs/recipe_transfusion.py:quick",
                           "vectorized_wall_s": vectorized, "sequential_wall_s": alone,
                           "speedup": alone / vectorized}
        print(f"default study: vectorised {vectorized:.0f} s, sequential {alone:.0f} s, "
              f"{alone / vectorized:.2f}x")
    result["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
