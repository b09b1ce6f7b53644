"""Runs trained together vs one after another: training throughput and a whole study.

    python benchmarks/grid_throughput.py [--runs 1 4 8 16] [--steps 40] [--study]
    python benchmarks/grid_throughput.py --model cbr_small --width 1 --steps 200  # on a GPU

Measures on whatever devices JAX sees (CPU here), for the quickstart model (slim CBR-Tiny,
28x28x1, batch 64; ``--model cbr_small --width 1`` for others, ``--image-size`` to resize
the 28x28 digits):

- for a grid of R runs (R = ``--runs``): examples/s of the R runs trained one after
  another (each its own input pipeline and the single-run jitted step, as a sequential
  sweep runs them) and of the same R runs trained together (R pipelines, batches stacked,
  the vmapped group step of `transfusion_jax.train.group`); compilation excluded, one
  warm-up step each. Each is timed twice: fed by the grain pipelines (as a sweep trains),
  and the step alone on one batch already on the device (what the accelerator itself
  gives, without the input pipeline);
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
    if args.image_size:
        config.data.image_size = args.image_size
    return config


def timed(step, carry, steps: int) -> tuple[float, object]:
    """Seconds of ``steps`` calls ``carry = step(*carry)`` after one warm-up call (the last
    output of each call is waited for at the end), and the final carry."""
    carry = step(*carry)
    jax.block_until_ready(carry)
    start = time.perf_counter()
    for _ in range(steps):
        carry = step(*carry)
    jax.block_until_ready(carry)
    return time.perf_counter() - start, carry


def sequential(config, num_runs: int, steps: int) -> tuple[float, float]:
    """Examples/s of ``num_runs`` runs trained one after another (warm-up step excluded):
    fed by their pipelines, and the step alone on a batch already on the device."""
    mesh = parallel.data_mesh()
    setup = build_run(config)
    step_fn = make_train_step(setup.model, setup.tx, setup.loss_name, False, mesh)
    fed = alone = 0.0
    for seed in range(num_runs):
        config.seed = seed
        state = parallel.replicate(mesh, initial_state(config, setup))
        iterator = train_iterator(train_dataset(setup.train_source, config.data,
                                                config.train.batch_size, seed),
                                  config.data.num_threads)

        def one_step(state, metrics, loss, iterator=iterator):
            return step_fn(state, metrics, parallel.make_global_batch(mesh, next(iterator)))

        seconds, (state, metrics, _) = timed(one_step, (state, empty_metrics(mesh), None),
                                             steps)
        fed += seconds
        batch = parallel.make_global_batch(mesh, next(iterator))
        seconds, _ = timed(lambda s, m, _, batch=batch: step_fn(s, m, batch),
                           (state, metrics, None), steps)
        alone += seconds
    examples = num_runs * steps * config.train.batch_size
    return examples / fed, examples / alone


def together(config, num_runs: int, steps: int) -> tuple[float, float]:
    """Examples/s of the same runs trained together (warm-up step excluded): fed by their
    pipelines, and the step alone on a stacked batch already on the device."""
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

    def one_step(state, metrics, loss, alive):
        batch = parallel.make_run_batch(mesh, stack_trees([next(i) for i in iterators]))
        return step_fn(state, metrics, batch, tables, on, alive)

    fed, (state, metrics, _, alive) = timed(one_step, (state, metrics, None, on), steps)
    batch = parallel.make_run_batch(mesh, stack_trees([next(i) for i in iterators]))
    alone, _ = timed(lambda s, m, _, a: step_fn(s, m, batch, tables, on, a),
                     (state, metrics, None, alive), steps)
    examples = num_runs * steps * config.train.batch_size
    return examples / fed, examples / alone


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
    parser.add_argument("--image-size", type=int, default=0,
                        help="resize the 28x28 images to this size (0: keep 28)")
    parser.add_argument("--study", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/grid_throughput.json"))
    args = parser.parse_args()

    data_dir = str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    config = quickstart_config(args, data_dir)
    result = {"devices": [str(d) for d in jax.devices()], "model": args.model,
              "width": args.width, "batch": args.batch, "conv_impl": args.conv_impl,
              "image_size": config.data.image_size, "steps": args.steps,
              "load_average_before": os.getloadavg(), "grid": []}
    print(f"{'':>5}{'fed by the pipelines':^42}{'step alone, batch on device':^42}")
    print(f"{'runs':>5}" + f"{'one after another':>18}{'together':>12}{'speed-up':>10}" * 2
          + "   (examples/s)")
    for num_runs in args.runs:
        alone = sequential(config.copy_and_resolve_references(), num_runs, args.steps)
        grouped = together(config.copy_and_resolve_references(), num_runs, args.steps)
        result["grid"].append({
            "runs": num_runs,
            "sequential_examples_per_s": alone[0], "vectorized_examples_per_s": grouped[0],
            "speedup": grouped[0] / alone[0],
            "step_alone_sequential_examples_per_s": alone[1],
            "step_alone_vectorized_examples_per_s": grouped[1],
            "step_alone_speedup": grouped[1] / alone[1]})
        print(f"{num_runs:>5}" + "".join(f"{a:>18.0f}{g:>12.0f}{g / a:>9.2f}x"
                                         for a, g in zip(alone, grouped, strict=True)),
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
