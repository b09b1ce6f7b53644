"""Runs trained together vs one after another: training throughput and a whole study.

    python benchmarks/grid_throughput.py [--runs 1 4 8 16] [--steps 40] [--study [auto False True]]
    python benchmarks/grid_throughput.py --model cbr_small --width 1 --steps 200  # on a GPU

Measures on whatever devices JAX sees (CPU here), for the quickstart model (slim CBR-Tiny,
28x28x1, batch 64; ``--model cbr_small --width 1`` for others, ``--image-size`` to resize
the 28x28 digits):

- for a grid of R runs (R = ``--runs``): examples/s of the R runs trained one after
  another (each its own input pipeline and the single-run jitted step, as a sequential
  sweep runs them), of the same R runs trained together (R pipelines, batches stacked,
  the vmapped group step of `transfusion_jax.train.group`, as a sweep trains them on a GPU
  or TPU), and, on a CPU, side by side (one thread and one CPU device per core, each
  training its share of the runs one after another with the single-run step, as a sweep
  trains them on a CPU: `transfusion_jax.experiments.side_by_side`); compilation
  excluded, one warm-up step each. Each is timed twice: fed by the grain pipelines (as a
  sweep trains), and the step alone on one batch already on the device (what the
  accelerator itself gives, without the input pipeline);
- with ``--study [VALUE ...]``: the wall time of the whole default study
  (``configs/recipe_transfusion.py:quick``) through the command line for each
  ``sweep.vectorize`` value (default ``auto False``: the default against one run after
  another), each from an empty compilation cache, as a fresh clone runs it.

Writes ``benchmarks/results/grid_throughput.json`` (``--out``), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
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


def side_by_side(config, num_runs: int, steps: int) -> tuple[float, float]:
    """Examples/s of the same runs trained side by side on the CPU run slots, as a sweep
    trains them on a CPU (`transfusion_jax.experiments.side_by_side`): one thread per slot,
    each training its share of the runs one after another with the single-run step on its
    own device; fed by their pipelines, and the step alone. NaN without slots."""
    slots = parallel.cpu_run_slots()[:num_runs]
    if len(slots) < 2:
        return float("nan"), float("nan")
    setup = build_run(config)
    ready = threading.Barrier(len(slots) + 1)
    seconds: dict[str, float] = {}  # wall seconds of each mode, all threads together

    def worker(k: int) -> None:
        mesh = parallel.data_mesh([slots[k]])
        step_fn = make_train_step(setup.model, setup.tx, setup.loss_name, False, mesh)
        runs = []
        for seed in range(k, num_runs, len(slots)):
            run_config = config.copy_and_resolve_references()
            run_config.seed = seed
            iterator = train_iterator(train_dataset(setup.train_source, run_config.data,
                                                    run_config.train.batch_size, seed),
                                      run_config.data.num_threads)
            state = parallel.replicate(mesh, initial_state(run_config, setup))
            state, metrics, _ = step_fn(state, empty_metrics(mesh),
                                        parallel.make_global_batch(mesh, next(iterator)))
            runs.append([state, metrics, iterator])
        jax.block_until_ready([r[:2] for r in runs])
        for mode in ("fed", "alone"):
            ready.wait()
            for run in runs:
                batch = parallel.make_global_batch(mesh, next(run[2]))
                for _ in range(steps):
                    if mode == "fed":
                        batch = parallel.make_global_batch(mesh, next(run[2]))
                    run[0], run[1], _ = step_fn(run[0], run[1], batch)
            jax.block_until_ready([r[:2] for r in runs])
            ready.wait()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(slots))]
    for thread in threads:
        thread.start()
    for mode in ("fed", "alone"):
        ready.wait()
        start = time.perf_counter()
        ready.wait()
        seconds[mode] = time.perf_counter() - start
    for thread in threads:
        thread.join()
    examples = num_runs * steps * config.train.batch_size
    return examples / seconds["fed"], examples / seconds["alone"]


def study(vectorize: bool | str, workdir: Path) -> float:
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
    parser.add_argument("--study", nargs="*", metavar="VECTORIZE",
                        help="time the default study with these sweep.vectorize values "
                             "(none given: auto False)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/grid_throughput.json"))
    args = parser.parse_args()

    # On a CPU, one device per core for the side-by-side rows (as a sweep command asks).
    parallel.add_cpu_run_slots(len(os.sched_getaffinity(0)))
    data_dir = str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    config = quickstart_config(args, data_dir)
    result = {"devices": [str(d) for d in jax.devices()], "model": args.model,
              "width": args.width, "batch": args.batch, "conv_impl": args.conv_impl,
              "image_size": config.data.image_size, "steps": args.steps,
              "cpu_run_slots": len(parallel.cpu_run_slots()),
              "load_average_before": os.getloadavg(), "grid": []}
    ways = ("one after another", "together", "side by side")
    print(f"{'':>5}{'fed by the pipelines':^48}{'step alone, batch on device':^48}")
    print(f"{'runs':>5}" + "".join(f"{w:>18}" if i == 0 else f"{w:>15}"
                                   for i, w in enumerate(ways)) * 2 + "   (examples/s; x: "
          "over one after another)")
    for num_runs in args.runs:
        alone = sequential(config.copy_and_resolve_references(), num_runs, args.steps)
        grouped = together(config.copy_and_resolve_references(), num_runs, args.steps)
        beside = side_by_side(config.copy_and_resolve_references(), num_runs, args.steps)
        row = {"runs": num_runs}
        for i, mode in enumerate(("", "step_alone_")):
            row.update({f"{mode}sequential_examples_per_s": alone[i],
                        f"{mode}vectorized_examples_per_s": grouped[i],
                        f"{mode}speedup": grouped[i] / alone[i],
                        f"{mode}side_by_side_examples_per_s": beside[i],
                        f"{mode}side_by_side_speedup": beside[i] / alone[i]})
        result["grid"].append(row)
        print(f"{num_runs:>5}" + "".join(
            f"{a:>18.0f}{g:>8.0f} {g / a:>5.2f}x{b:>8.0f} {b / a:>5.2f}x"
            for a, g, b in zip(alone, grouped, beside, strict=True)), flush=True)
    if args.study is not None:
        result["study"] = {"config": "configs/recipe_transfusion.py:quick", "wall_s": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for value in args.study or ["auto", "False"]:
                result["study"]["wall_s"][value] = study(value, Path(tmp) / value)
                print(f"default study, sweep.vectorize={value}: "
                      f"{result['study']['wall_s'][value]:.0f} s", flush=True)
        walls = result["study"]["wall_s"]
        if "auto" in walls and "False" in walls:
            result["study"]["auto_over_one_after_another"] = walls["False"] / walls["auto"]
            print(f"default study: auto {walls['auto']:.0f} s, one after another "
                  f"{walls['False']:.0f} s, {walls['False'] / walls['auto']:.2f}x")
    result["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
