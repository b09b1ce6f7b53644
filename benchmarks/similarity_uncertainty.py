"""What bootstrap intervals and null baselines cost next to the point estimate, in one run.

Run::

    python benchmarks/similarity_uncertainty.py          # quickstart-sized case

The quickstart's similarity job streams C = 5 checkpoints x L = 5 layers (widths 16, 32, 64,
128, 128: CBR-Tiny's blocks and pre_logits) over n = 1,000 test images in batches of 250,
computes linear CKA of all 325 item pairs and SVCCA (keep 0.99) of the pairs its figures
show. This times, on synthetic activations of those shapes (float32):

* the point stream: all pairs, CKA read-out, and SVCCA of the C x L pairs "to the first
  checkpoint" (`batched.reference_pairs`);
* `resample` for those C x L pairs: ``B`` bootstrap + ``K`` null replicates, the update
  pass and the CKA and SVCCA read-outs.

Times are the best of ``--repeats`` runs after a compile run (reported separately).
Writes ``benchmarks/results/similarity_uncertainty.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_utils import first_and_best  # noqa: E402

from transfusion_jax import similarity as sim  # noqa: E402
from transfusion_jax.similarity import resample, streaming  # noqa: E402


def activations(c, widths, n, seed=0):
    """Per layer (C, n, d): checkpoints drift away from the first, layers share a latent."""
    r = np.random.default_rng(seed)
    z = r.standard_normal((n, 8))
    out = []
    for w in widths:
        base = z @ r.standard_normal((8, w)) + r.standard_normal((n, w))
        out.append(np.stack([np.maximum(base + k * 0.5 * r.standard_normal((n, w)) + 0.3, 0)
                             for k in range(c)]).astype(np.float32))
    return out


def batches(acts, size):
    n = acts[0].shape[1]
    return [[a[:, s:s + size] for a in acts] for s in range(0, n, size)]


timed = partial(first_and_best, sync=jax.block_until_ready)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=int, default=5)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 128])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--null", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "similarity_uncertainty.json"))
    args = p.parse_args()
    c, layers = args.checkpoints, len(args.widths)
    acts = activations(c, args.widths, args.n)
    data = batches(acts, args.batch)
    ref_pairs = sim.reference_pairs(c, layers)
    spec = streaming.StreamSpec.create(data[0], debiased=False)  # all pairs, as the job
    where = {tuple(q): k for k, q in enumerate(spec.pairs)}
    to_ref = [where[tuple(sorted(q))] for q in ref_pairs.tolist()]

    def point_stream():
        stats = streaming.init(spec, data[0])
        for b in data:
            stats = streaming.update(stats, b, spec=spec)
        return stats

    def point_cka():
        return streaming.linear_cka(point_stream(), spec=spec)

    stats = point_stream()

    def point_svcca():
        return streaming.cca_similarity(stats, spec=spec, method="svcca", only=to_ref)

    rspec = resample.ResampleSpec.create(data[0], pairs=ref_pairs, bootstrap=args.bootstrap,
                                         null=args.null)

    def resample_stream():
        st = resample.init(rspec, data[0])
        for b in data:
            st = resample.update(st, b, spec=rspec)
        return st

    results = {"shape": {"checkpoints": c, "widths": args.widths, "n": args.n,
                         "batch": args.batch, "bootstrap": args.bootstrap, "null": args.null,
                         "pairs_point": len(spec.pairs), "pairs_resampled": len(ref_pairs)},
               "state_bytes": {"point": spec.state_bytes(),
                               "replicates": rspec.stream.state_bytes(
                                   replicates=args.bootstrap + args.null)},
               "jax": jax.__version__, "backend": jax.default_backend(),
               "cpus": len(os.sched_getaffinity(0))}
    times = {}

    def record(name, fn):
        out, times[name], times[name + " (first call)"] = timed(fn, args.repeats)
        print(f"{name:40s} {times[name]:8.3f} s (first call {times[name + ' (first call)']:.1f} s)",
              flush=True)
        return out

    record("point: stream + CKA, all pairs", point_cka)
    record("point: SVCCA read-out, C x L pairs", point_svcca)
    rstats = record("resample: stream, C x L pairs", resample_stream)
    record("resample: CKA read-out", lambda: resample.linear_cka(rstats, spec=rspec))
    record("resample: SVCCA read-out", lambda: resample.cca_similarity(rstats, spec=rspec,
                                                                      method="svcca"))
    results["seconds"] = times
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    mib = {k: v / 2**20 for k, v in results["state_bytes"].items()}
    print(f"state: point {mib['point']:.1f} MiB, replicates {mib['replicates']:.1f} MiB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
