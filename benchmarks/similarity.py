"""Speed of the similarity engine against what users of the NumPy tools do, in one run.

Run::

    python benchmarks/similarity.py                      # 1 thread, sampled baseline loop
    python benchmarks/similarity.py --threads 2 --out benchmarks/results/similarity_2threads.json
    python benchmarks/similarity.py --baseline-pairs all  # time the whole baseline loop

Measures, on the same data in the same process:

1. The machine's float32 matmul peak (4096 x 4096, best of NumPy/OpenBLAS and jitted JAX at
   full float32 precision, as the engine computes; on a GPU, not its TF32 rate).
2. Linear CKA of all pairs of C=20 checkpoints x L=5 layers, n=5,000, d=512: the jitted
   `linear_cka_matrix` vs a Python loop over the 4,950 pairs ``i < j`` calling Kornblith et
   al.'s per-pair NumPy ``feature_space_linear_cka``. Every pair costs the same, so by default
   the loop is timed on a random sample of pairs and scaled to all of them (``--baseline-pairs
   all`` times the whole loop); the sampled values are checked against the matrix.
3. SVCCA (keep 0.99 of the variance) and PWCCA on one (5,000 x 2,048) pair: `svcca` /
   `pwcca` (both conventions; ``'released'`` is the default and must give the baseline's
   value) vs the google/svcca recipe (``np.linalg.svd`` of each centered (neurons,
   datapoints) matrix, then ``cca_core.get_cca_similarity`` with epsilon 1e-10; and
   ``pwcca.compute_pwcca``), re-implemented here step for step (np.cov in float64, pinv,
   eigh-based matrix square roots, SVD; QR of the canonical directions for PWCCA).

Threads are pinned the same way for both sides before NumPy or JAX load: the process is bound
to the first ``--threads`` CPUs (``os.sched_setaffinity``), ``OMP/OPENBLAS/MKL_NUM_THREADS``
are set to that count, and with one thread XLA's multi-threaded Eigen is switched off
(``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``).
Times are the best of ``--repeats`` runs: ours after one warm-up (compile) run, whose time is
reported separately; the SVCCA and PWCCA baselines the same way (the sweep's baseline loop is
timed once over its sampled pairs). Writes ``benchmarks/results/similarity.json``.

Synthetic activations have a power-law covariance spectrum (eigenvalue i ~ 1/i, as measured
for CNN and cortical representations) and layers/checkpoints that share a latent signal.
"""

from __future__ import annotations

import argparse
import os
import sys


def _pin_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--wide", type=int, default=2048, help="width for SVCCA/PWCCA")
    p.add_argument("--baseline-pairs", default="200", help="'all' or a sample size")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-cca", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "similarity.json"))
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    _pin_threads(ARGS.threads)

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_utils import first_and_best  # noqa: E402

from transfusion_jax import similarity as sim  # noqa: E402
from transfusion_jax.similarity import batched  # noqa: E402

# ------------------------------------------------------------------ NumPy baselines


def feature_space_linear_cka(features_x, features_y, debiased=False):
    """Kornblith et al.'s per-pair NumPy function (CKA demo notebook), biased branch."""
    features_x = features_x - np.mean(features_x, 0, keepdims=True)
    features_y = features_y - np.mean(features_y, 0, keepdims=True)
    dot_product_similarity = np.linalg.norm(features_x.T.dot(features_y)) ** 2
    normalization_x = np.linalg.norm(features_x.T.dot(features_x))
    normalization_y = np.linalg.norm(features_y.T.dot(features_y))
    return dot_product_similarity / (normalization_x * normalization_y)


def _positivedef_matrix_sqrt(array):
    w, v = np.linalg.eigh(array)
    return v @ np.diag(np.sqrt(w)) @ v.T


def google_get_cca_similarity(acts1, acts2, epsilon=0.0):
    """google/svcca cca_core.get_cca_similarity, (neurons, datapoints) inputs, core steps."""
    numx = acts1.shape[0]
    covariance = np.cov(acts1, acts2)
    sxx, sxy = covariance[:numx, :numx], covariance[:numx, numx:]
    syy = covariance[numx:, numx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    x_idxs = np.abs(np.diagonal(sxx)) >= epsilon
    y_idxs = np.abs(np.diagonal(syy)) >= epsilon
    sxx, syy, sxy = sxx[x_idxs][:, x_idxs], syy[y_idxs][:, y_idxs], sxy[x_idxs][:, y_idxs]
    sxx = sxx + epsilon * np.eye(sxx.shape[0])
    syy = syy + epsilon * np.eye(syy.shape[0])
    invsqrt_xx = _positivedef_matrix_sqrt(np.linalg.pinv(sxx))
    invsqrt_yy = _positivedef_matrix_sqrt(np.linalg.pinv(syy))
    u, s, v = np.linalg.svd(invsqrt_xx @ sxy @ invsqrt_yy)
    return {"coef_x": u.T, "cca_coef1": np.abs(s), "x_idxs": x_idxs, "y_idxs": y_idxs,
            "invsqrt_xx": invsqrt_xx, "neuron_means1": np.mean(acts1, axis=1, keepdims=True)}


def google_svcca(x, y, keep=0.99):
    """The google/svcca tutorial recipe: SVD of centered (neurons, datapoints), then CCA."""

    def reduce(acts):
        cacts = acts - np.mean(acts, axis=1, keepdims=True)
        _, s, v = np.linalg.svd(cacts, full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, keep) + 1)
        return np.dot(s[:k] * np.eye(k), v[:k]), k

    a, kx = reduce(x.T)
    b, ky = reduce(y.T)
    res = google_get_cca_similarity(a, b, epsilon=1e-10)
    return float(np.mean(res["cca_coef1"])), (kx, ky)


def google_pwcca(x, y, epsilon=1e-10):
    """google/svcca pwcca.compute_pwcca (x side branch)."""
    acts1, acts2 = x.T, y.T
    res = google_get_cca_similarity(acts1, acts2, epsilon=epsilon)
    idx = res["x_idxs"]
    dirns = res["coef_x"] @ (acts1[idx] - res["neuron_means1"][idx]) + res["neuron_means1"][idx]
    q, _ = np.linalg.qr(dirns.T)
    weights = np.sum(np.abs(q.T @ acts1[idx].T), axis=1)
    weights = weights / np.sum(weights)
    return float(np.sum(weights * res["cca_coef1"]))


# ------------------------------------------------------------------------- helpers


_timed = partial(first_and_best, sync=jax.block_until_ready)


def _best_of(fn, repeats):
    """Best time of ``repeats`` runs of a NumPy baseline (nothing to compile: no warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def matmul_peak(repeats=3, size=4096):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    _, t_np, _ = _timed(lambda: a @ b, repeats)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    # Full float32, as the similarity engine computes (a GPU's default would be TF32).
    mm = jax.jit(partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST))
    _, t_jax, _ = _timed(lambda: mm(ja, jb), repeats)
    return {"numpy_gflops": flops / t_np / 1e9, "jax_gflops": flops / t_jax / 1e9,
            "peak_gflops": max(flops / t_np, flops / t_jax) / 1e9}


def powerlaw_acts(rng, n, d, num, shared=0.7):
    """``num`` representations (n, d) with eigenvalue spectrum ~1/i and a shared latent."""
    scale = (1.0 / np.arange(1, d + 1)) ** 0.5
    latent = rng.standard_normal((n, d), dtype=np.float32) * scale
    out = []
    for _ in range(num):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        own = rng.standard_normal((n, d), dtype=np.float32) * scale
        out.append((shared * latent + (1 - shared) * own) @ q.astype(np.float32))
    return out


def sweep_flops(form, n, p, d, block):
    """Flops the chosen form performs (Gram: upper-triangle row blocks; feature: Z^T Z)."""
    if form == "feature":
        return 2.0 * n * (p * d) ** 2
    nb = -(-n // block)
    pairs = nb * (nb + 1) // 2
    return pairs * (2.0 * p * block * block * d + 2.0 * p * p * block * block)


# ---------------------------------------------------------------------------- main


def bench_sweep(args, peak, rng):
    c, layers, n, d = args.checkpoints, args.layers, args.n, args.d
    p = c * layers
    print(f"building activations ({c}, {layers}, {n}, {d}) ...", flush=True)
    per_layer = [np.stack(powerlaw_acts(rng, n, d, c)) for _ in range(layers)]
    acts = np.stack(per_layer, axis=1)  # (C, L, n, d)
    del per_layer
    block = batched.default_block_size(n, p)
    form = batched.choose_matrix_form(n, [d] * p)
    mat, t_ours, t_first = _timed(lambda: sim.linear_cka_matrix(acts), args.repeats)
    mat = np.asarray(mat)
    resident = {}
    if jax.default_backend() != "cpu":  # the same with the activations already on the device
        dev = jax.device_put(acts)
        _, resident["ours_device_resident_s"], _ = _timed(
            lambda: sim.linear_cka_matrix(dev), args.repeats)
        del dev
    flops = sweep_flops(form, n, p, d, block)
    items = acts.reshape(p, n, d)
    all_pairs = [(i, j) for i in range(p) for j in range(i + 1, p)]
    if args.baseline_pairs == "all":
        sample = all_pairs
    else:
        idx = rng.choice(len(all_pairs), size=min(int(args.baseline_pairs), len(all_pairs)),
                         replace=False)
        sample = [all_pairs[k] for k in idx]
    feature_space_linear_cka(items[0], items[1])  # warm-up
    t0 = time.perf_counter()
    vals = [feature_space_linear_cka(items[i], items[j]) for i, j in sample]
    t_sample = time.perf_counter() - t0
    t_base = t_sample * len(all_pairs) / len(sample)
    err = max(abs(mat[i, j] - v) for (i, j), v in zip(sample, vals, strict=True))
    return {
        "shape": [c, layers, n, d], "form": form, "block_size": block,
        "ours_s": t_ours, "ours_first_call_s": t_first, "ours_gflop": flops / 1e9,
        "ours_gflops": flops / t_ours / 1e9, "fraction_of_peak": flops / t_ours / 1e9 / peak,
        "baseline_s": t_base, "baseline_pairs_timed": len(sample),
        "baseline_pairs_total": len(all_pairs), "baseline_gflops":
            7.0 * n * d * d * len(sample) / t_sample / 1e9,
        "speedup": t_base / t_ours, "max_abs_diff": float(err), **resident,
        **({"device_resident_fraction_of_peak":
            flops / resident["ours_device_resident_s"] / 1e9 / peak} if resident else {}),
    }


def bench_cca(args, rng):
    n, d = args.n, args.wide
    x, y = powerlaw_acts(rng, n, d, 2)
    out = {"shape": [n, d]}
    res, t, t_first = _timed(lambda: sim.svcca(x, y, keep=0.99), args.repeats)
    (base_val, ks), t_base = _best_of(lambda: google_svcca(x, y, 0.99), args.repeats)
    out["svcca"] = {"ours_s": t, "ours_first_call_s": t_first, "baseline_s": t_base,
                    "speedup": t_base / t, "ours": float(res.mean), "baseline": base_val,
                    "kept": [int(k) for k in ks], "ours_count": int(res.count)}
    base_val, t_base = _best_of(lambda: google_pwcca(x, y), args.repeats)
    for convention in ("released", "definition"):
        res, t, t_first = _timed(lambda c=convention: sim.pwcca(x, y, epsilon=1e-10,
                                                                convention=c), args.repeats)
        out[f"pwcca_{convention}"] = {"ours_s": t, "ours_first_call_s": t_first,
                                      "baseline_s": t_base, "speedup": t_base / t,
                                      "ours": float(res.mean), "baseline": base_val}
    return out


def main(args):
    rng = np.random.default_rng(0)
    info = {"threads": args.threads, "cpus": len(os.sched_getaffinity(0)),
            "jax": jax.__version__, "numpy": np.__version__, "backend": jax.default_backend(),
            "machine": platform.processor() or platform.machine()}
    print(f"threads={args.threads} backend={info['backend']} jax={info['jax']}", flush=True)
    peak = matmul_peak()
    print(f"matmul peak: numpy {peak['numpy_gflops']:.1f} GFLOP/s, jax "
          f"{peak['jax_gflops']:.1f} GFLOP/s", flush=True)
    sweep = bench_sweep(args, peak["peak_gflops"], rng)
    results = {"info": info, "peak": peak, "linear_cka_sweep": sweep}
    if not args.skip_cca:
        results["cca"] = bench_cca(args, rng)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)

    s = sweep
    c, layers, n, d = s["shape"]
    rows = [("task", "ours (s)", "NumPy baseline (s)", "speed-up", "notes")]
    rows.append((
        f"linear CKA, {c}x{layers} items all pairs, n={n}, d={d}", f"{s['ours_s']:.2f}",
        f"{s['baseline_s']:.1f}", f"{s['speedup']:.1f}x",
        f"{s['ours_gflops']:.0f} GFLOP/s = {100 * s['fraction_of_peak']:.0f}% of peak; "
        f"baseline timed on {s['baseline_pairs_timed']}/{s['baseline_pairs_total']} pairs; "
        f"max |diff| {s['max_abs_diff']:.1e}" + (
            f"; {s['ours_device_resident_s']:.3f} s from device-resident activations"
            if "ours_device_resident_s" in s else "")))
    if "cca" in results:
        cc = results["cca"]
        sv = cc["svcca"]
        rows.append((f"SVCCA keep 0.99, ({cc['shape'][0]} x {cc['shape'][1]})",
                     f"{sv['ours_s']:.2f}", f"{sv['baseline_s']:.1f}", f"{sv['speedup']:.1f}x",
                     f"value {sv['ours']:.4f} vs {sv['baseline']:.4f}; kept {sv['kept']}"))
        for convention in ("released", "definition"):
            pw = cc[f"pwcca_{convention}"]
            rows.append((f"PWCCA {convention}, ({cc['shape'][0]} x {cc['shape'][1]})",
                         f"{pw['ours_s']:.2f}", f"{pw['baseline_s']:.1f}",
                         f"{pw['speedup']:.1f}x",
                         f"value {pw['ours']:.6f} vs {pw['baseline']:.6f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"\nmatmul peak {peak['peak_gflops']:.1f} GFLOP/s (float32 4096^2), "
          f"{args.threads} thread(s)")
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + " | " + r[4])
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
