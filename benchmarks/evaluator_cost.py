"""What live evaluators cost: the quickstart run with and without them, in the same session.

    python benchmarks/evaluator_cost.py [--repeats 2] [--out benchmarks/results/evaluator_cost.json]

Trains ``configs/quickstart.py`` (600 steps, batch 64) in fresh workdirs, alternating:

- ``none``: only the main evaluation (classification every 50 steps);
- ``similarity_to_init``: plus linear CKA of every block with its step-0 representation on
  512 test images, every 25 steps;
- ``both``: the quickstart as shipped, plus ``weight_change`` every 25 steps.

Each variant's time is the best over ``--repeats`` of (a) the training loop's wall time
(``summary.json``'s ``wall_time_s``: steps, evaluations, checkpoints) and (b) the whole
``train`` call, including building the evaluators (the step-0 representations) and
compiling. All runs share one persistent compilation cache, warmed by a first untimed run of
each variant, so compile time is what a user re-running the quickstart pays.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax

VARIANTS = ("none", "similarity_to_init", "both")


def configure(variant: str):
    from transfusion_jax.config import load_config

    config = load_config("configs/quickstart.py")
    config.log.tensorboard = False
    config.log.plot = False
    if variant == "none":
        config.evals = {}
    elif variant == "similarity_to_init":
        del config.evals["weight_change"]
    return config


def timed_run(variant: str, root: Path) -> dict[str, float]:
    from transfusion_jax.train.loop import train_and_evaluate

    workdir = Path(tempfile.mkdtemp(dir=root))
    start = time.perf_counter()
    summary = train_and_evaluate(configure(variant), workdir)
    return {"loop_s": summary["wall_time_s"], "call_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/evaluator_cost.json")
    args = parser.parse_args()
    cache = os.environ.get("TFJ_COMPILATION_CACHE", os.path.expanduser("~/.cache/tfj_jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as root:
        for v in VARIANTS:  # warm the compilation cache
            timed_run(v, Path(root))
        for _ in range(args.repeats):
            for v in VARIANTS:
                results[v].append(timed_run(v, Path(root)))
                print(v, results[v][-1], flush=True)
    load.append(os.getloadavg()[0])
    best = {v: {k: min(r[k] for r in runs) for k in ("loop_s", "call_s")}
            for v, runs in results.items()}
    report = {"best": best, "runs": results, "load_average_start_end": load,
              "overhead": {v: {k: best[v][k] / best["none"][k] - 1 for k in best[v]}
                           for v in VARIANTS[1:]}}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| evaluators | training loop | whole run | overhead (loop / whole) |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        o = report["overhead"].get(v, {"loop_s": 0.0, "call_s": 0.0})
        print(f"| {v} | {best[v]['loop_s']:.1f} s | {best[v]['call_s']:.1f} s | "
              f"{100 * o['loop_s']:+.1f}% / {100 * o['call_s']:+.1f}% |")


if __name__ == "__main__":
    main()
