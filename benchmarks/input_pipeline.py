"""What the grain input pipeline delivers for ImageNet-like training images, per CPU core.

    python benchmarks/input_pipeline.py                      # 224 px, 1 and all threads
    python benchmarks/input_pipeline.py --size 299 --threads 1,2,4,8,16

Prepares `photos_dataset`'s examples (scikit-image photos, 256-512 px a side) as a tfds
array_record dataset twice: JPEG-encoded, and decoded once and stored raw at the training
resolution. Then measures, on one core and in-process, the per-image cost of each stage the
project's pipeline runs (`transfusion_jax.data`: read + decode, resize to ``--size``, convert
and normalise to float32, random crop and flip), and the throughput of the real pipeline
(`train_dataset` + `train_iterator`, batches of ``--batch``) with each ``--threads`` count.
From the one-thread rate it says how many cores feed a given training throughput (``--feed``,
default: the GPU results in ``train_throughput_gpu.json`` when present, else 5,000 images/s).

Writes ``benchmarks/results/input_pipeline.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from bench_utils import machine_state, markdown_table  # noqa: E402
from photos_dataset import photos_source  # noqa: E402

from transfusion_jax.config import base_config  # noqa: E402
from transfusion_jax.data import train_dataset, train_iterator  # noqa: E402
from transfusion_jax.data.preprocess import make_augment, make_preprocess  # noqa: E402


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="batches timed per thread count")
    p.add_argument("--threads", default="", help="comma-separated (default: 1 and all CPUs)")
    p.add_argument("--feed", type=float, default=0, help="images/s to feed (0: see above)")
    p.add_argument("--data-dir", default="")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                        "input_pipeline.json"))
    return p.parse_args()


def data_config(size: int):
    """ImageNet-style training input: whole image resized, ImageNet normalisation, reflect-pad
    crop (size / 14 pixels, 16 at 224) and horizontal flip."""
    data = base_config().data
    data.image_size, data.channels, data.normalize = size, 3, "imagenet"
    data.augment.crop_padding, data.augment.flip = size // 14, True
    return data


def stage_costs(source, data, n: int) -> dict[str, float]:
    """Milliseconds per image of each stage, on one core, in this thread."""
    preprocess, augment = make_preprocess(data), make_augment(data)
    rng = np.random.default_rng(0)
    timings = {"read_decode": 0.0, "resize_normalize": 0.0, "crop_flip": 0.0}
    for i in range(n):
        t0 = time.perf_counter()
        record = source[i % len(source)]
        t1 = time.perf_counter()
        record = preprocess(record)
        t2 = time.perf_counter()
        augment(record, rng)
        t3 = time.perf_counter()
        for key, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            timings[key] += dt
    return {key: 1e3 * value / n for key, value in timings.items()}


def pipeline_rate(source, data, batch: int, batches: int, threads: int) -> float:
    """Images/s of the project's train pipeline with ``threads`` grain threads."""
    iterator = train_iterator(train_dataset(source, data, batch, seed=0), threads)
    next(iterator)  # start-up and the first prefetch are not timed
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def feed_target(explicit: float) -> tuple[float, str]:
    if explicit:
        return explicit, "--feed"
    gpu = Path(__file__).parent / "results" / "train_throughput_gpu.json"
    if gpu.exists():
        rates = [r.get("examples_per_s", 0) for case in json.loads(gpu.read_text())["cases"]
                 for name, r in case.get("results", {}).items()
                 if name.startswith("transfusion_jax")]
        if rates:
            return max(rates), str(gpu.name)
    return 5000.0, "the GPU target of 5,000 images/s"


def main(args) -> None:
    data_dir = args.data_dir or str(Path(tempfile.gettempdir()) / "tfj_bench_tfds")
    data = data_config(args.size)
    cpus = len(os.sched_getaffinity(0))
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cpus})
    feed, feed_source = feed_target(args.feed)
    report = {"size": args.size, "examples": args.examples, "batch": args.batch,
              "machine": {"start": machine_state()}, "forms": {}}
    rows = []
    for form in ("jpeg", "decoded"):
        source = photos_source(data_dir, form, args.examples, args.size)
        costs = stage_costs(source, data, min(args.examples, 128))
        rates = {t: pipeline_rate(source, data, args.batch, args.batches, t) for t in threads}
        per_core = rates[min(threads)] / min(threads)
        cores = feed / per_core
        report["forms"][form] = {"stage_ms_per_image": costs, "images_per_s": rates,
                                 "images_per_s_per_core": per_core, "cores_to_feed": cores}
        rows.append([form, *(f"{v:.2f}" for v in costs.values()), f"{sum(costs.values()):.2f}",
                     *(f"{rates[t]:,.0f}" for t in threads), f"{cores:.0f}"])
        print(f"{form}: {json.dumps(report['forms'][form])}", flush=True)
    report["machine"]["end"] = machine_state()
    report["feed_images_per_s"], report["feed_from"] = feed, feed_source
    header = ["stored as", "read+decode ms", "resize+normalize ms", "crop+flip ms",
              "total ms/image", *(f"{t} thread{'s' * (t > 1)} img/s" for t in threads),
              f"cores to feed {feed:,.0f} img/s"]
    report["table"] = markdown_table(header, rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.size}x{args.size} training images, batches of {args.batch}; load average "
          f"{report['machine']['start']['loadavg']} -> {report['machine']['end']['loadavg']}; "
          f"feed target from {feed_source}")
    print(report["table"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(_parse())
