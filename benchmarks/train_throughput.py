"""Training throughput of the quickstart model: jitted step alone, and the whole input+step.

    python benchmarks/train_throughput.py [--steps 100] [--batch 64] [--width 0.25]

Measures on whatever devices JAX sees (CPU here):
- ``step``: the compiled train step on one batch already on device (examples/s);
- ``pipeline+step``: the real loop body (grain pipeline -> global batch -> step);
- achieved GFLOP/s of the step (XLA's own FLOP count of the compiled step) as a fraction
  of this machine's float32 NumPy matmul rate, measured in the same run (XLA:CPU
  convolutions run well below matmul peak).
Writes ``benchmarks/results/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from transfusion_jax import parallel
from transfusion_jax.config import load_config
from transfusion_jax.data import open_source, train_dataset, train_iterator
from transfusion_jax.train.setup import build_run, initial_state
from transfusion_jax.train.step import empty_metrics, make_train_step


def time_loop(fn, steps: int) -> float:
    """Seconds per call of ``fn`` (after one warm-up call), blocking on its output."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of a plain NumPy matmul on this machine."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    args = parser.parse_args()

    config = load_config(str(Path(__file__).parent.parent / "configs" / "quickstart.py"))
    config.train.batch_size = args.batch
    config.model.options.width = args.width
    config.data.data_dir = str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    mesh = parallel.data_mesh()
    setup = build_run(config)
    step_fn = make_train_step(setup.model, setup.tx, setup.loss_name, False, mesh)
    state = parallel.replicate(mesh, initial_state(config, setup))
    metrics = empty_metrics(mesh)
    source, _ = open_source(config.data, "train")
    iterator = train_iterator(train_dataset(source, config.data, args.batch, 0), 4)
    fixed = parallel.make_global_batch(mesh, next(iterator))

    def step_only():
        nonlocal state, metrics
        state, metrics, loss = step_fn(state, metrics, fixed)
        return loss

    def pipeline_and_step():
        nonlocal state, metrics
        state, metrics, loss = step_fn(state, metrics,
                                       parallel.make_global_batch(mesh, next(iterator)))
        return loss

    t_step = time_loop(step_only, args.steps)
    t_full = time_loop(pipeline_and_step, args.steps)
    flops = jax.jit(lambda s, m, b: step_fn(s, m, b)).lower(state, metrics, fixed)
    cost = flops.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    step_flops = float(cost.get("flops", float("nan")))
    peak = matmul_peak()
    result = {
        "devices": [str(d) for d in jax.devices()], "batch": args.batch, "width": args.width,
        "model": config.model.name, "step_examples_per_s": args.batch / t_step,
        "pipeline_step_examples_per_s": args.batch / t_full,
        "step_gflop": step_flops / 1e9, "achieved_gflop_s": step_flops / t_step / 1e9,
        "numpy_matmul_peak_gflop_s": peak,
    }
    result["fraction_of_matmul_peak"] = result["achieved_gflop_s"] / peak
    print(f"{'measure':<34}{'value':>12}")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:<34}{value:>12.2f}")
    out = Path(__file__).parent / "results" / "train_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
