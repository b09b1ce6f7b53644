"""Accuracy of every similarity form and accumulator against float64, over input scales.

Run::

    python benchmarks/similarity_accuracy.py            # writes results/similarity_accuracy.json

For ReLU-like activations with non-zero means (``n`` examples of width ``d``: 1,000 x 64,
1,000 x 512 and 5,120 x 512; a shared latent so the pair's similarity is well inside (0, 1)),
each form is evaluated in float32 and float64 on the data multiplied by 1e-6, 1e-3, 1, 1e3
and 1e6, and compared with a float64 NumPy reference on the unscaled data (the estimators
are scale invariant): the largest absolute error over the scales, for the pair and for a
representation with itself (whose value is 1). The references are independent NumPy code
(``tests/similarity_reference``: the papers' formulas and google/svcca's released
conventions).

At 1,000 x 512, ``n - 1 < dx + dy``: 25 canonical correlations equal 1 exactly, PWCCA's
weights then depend on an arbitrary basis of their subspace (in any implementation), so the
table leaves the CCA family out there and measures it at 5,120 x 512 instead (a size marked
``:cca`` runs only the CCA family and Procrustes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests import similarity_reference as ref  # noqa: E402
from transfusion_jax import similarity as sim  # noqa: E402
from transfusion_jax.similarity import minibatch, streaming  # noqa: E402

SCALES = (1e-6, 1e-3, 1.0, 1e3, 1e6)


def relu_pair(n: int, d: int, seed: int = 0):
    r = np.random.default_rng(seed)
    z = r.standard_normal((n, 8))
    x = np.maximum(z @ r.standard_normal((8, d)) + r.standard_normal((n, d)) + 0.5, 0)
    y = np.maximum(z @ r.standard_normal((8, d)) + r.standard_normal((n, d)) + 0.2, 0)
    return x, y


# ------------------------------------------------------------------ float64 references


def rbf_gram64(x, frac=0.8):
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    np.fill_diagonal(d2, 0)
    return np.exp(-d2 / (2 * frac**2 * np.median(d2)))


def minibatch64(x, y, kernel, batches):
    gram = ref.gram_linear if kernel == "linear" else rbf_gram64
    kl = np.mean([ref.hsic_unbiased(gram(x[s]), gram(y[s])) for s in batches])
    kk = np.mean([ref.hsic_unbiased(gram(x[s]), gram(x[s])) for s in batches])
    ll = np.mean([ref.hsic_unbiased(gram(y[s]), gram(y[s])) for s in batches])
    return kl / np.sqrt(kk * ll)


def references(x, y, batches, cca_only=False):
    if cca_only:
        return {
            "cca": float(np.mean(ref.cca(x, y))),
            "svcca": float(np.mean(ref.svcca(x, y, 0.99))),
            "pwcca released": ref.released_pwcca(x, y)[0],
            "pwcca definition": ref.pwcca(x, y)[0],
            "procrustes": 1.0 - ref.procrustes(x, y) ** 2 / 2,
        }
    return {
        "linear": ref.linear_cka(x, y),
        "debiased": ref.linear_cka(x, y, debiased=True),
        "rbf": ref.cka(rbf_gram64(x), rbf_gram64(y)),
        "minibatch linear": minibatch64(x, y, "linear", batches),
        "minibatch rbf": minibatch64(x, y, "rbf", batches),
        "cca": float(np.mean(ref.cca(x, y))),
        "svcca": float(np.mean(ref.svcca(x, y, 0.99))),
        "pwcca released": ref.released_pwcca(x, y)[0],
        "pwcca definition": ref.pwcca(x, y)[0],
        "procrustes": 1.0 - ref.procrustes(x, y) ** 2 / 2,
    }


# ------------------------------------------------------------------------------ forms


def _both(f):
    return lambda x, y: (f(x, y), f(x, x))


def _matrix(x, y, **kw):
    m = sim.linear_cka_matrix([x[None], y[None]], **kw)
    return m[0, 1], m[0, 0]


def _stream(x, y, read, debiased, batch=250):
    acts = [x[None], y[None]]
    spec = streaming.StreamSpec.create(acts, pairs=[(0, 1), (0, 0)], debiased=debiased)
    stats = streaming.init(spec, [a[:, :batch] for a in acts])
    for s in range(0, x.shape[0], batch):
        stats = streaming.update(stats, [a[:, s:s + batch] for a in acts], spec=spec)
    out = read(stats, spec)
    return out[0], out[1]


def _minibatch(x, y, kernel, batches):
    acts = [x[None], y[None]]
    stats = minibatch.init(sim.layout_of(acts), x.dtype)
    for s in batches:
        stats = minibatch.update(stats, [a[:, s] for a in acts], kernel=kernel)
    m = minibatch.cka(stats)
    return m[0, 1], m[0, 0]


def forms(batches):
    """name -> (reference key, f(x, y) -> (pair value, self value))."""
    lin = partial(sim.linear_cka)
    return {
        "linear_cka, feature form": ("linear", _both(partial(lin, form="feature"))),
        "linear_cka, Gram form": ("linear", _both(partial(lin, form="gram"))),
        "linear_cka debiased, feature form": ("debiased", _both(
            partial(lin, debiased=True, form="feature"))),
        "linear_cka debiased, Gram form": ("debiased", _both(
            partial(lin, debiased=True, form="gram"))),
        "rbf_cka (sigma_frac 0.8)": ("rbf", _both(sim.rbf_cka)),
        "linear_cka_matrix, Gram form": ("linear", partial(_matrix, form="gram")),
        "linear_cka_matrix, feature form": ("linear", partial(_matrix, form="feature")),
        "linear_cka_matrix debiased, Gram form": ("debiased", partial(
            _matrix, form="gram", debiased=True)),
        "streaming.linear_cka": ("linear", partial(
            _stream, read=lambda st, sp: streaming.linear_cka(st, spec=sp), debiased=False)),
        "streaming.linear_cka debiased": ("debiased", partial(
            _stream, read=lambda st, sp: streaming.linear_cka(st, spec=sp, debiased=True),
            debiased=True)),
        "minibatch CKA, linear (4 batches)": ("minibatch linear", partial(
            _minibatch, kernel="linear", batches=batches)),
        "minibatch CKA, RBF (4 batches)": ("minibatch rbf", partial(
            _minibatch, kernel="rbf", batches=batches)),
        "cca (mean correlation)": ("cca", _both(lambda x, y: sim.cca(x, y).mean)),
        "svcca (keep 0.99)": ("svcca", _both(lambda x, y: sim.svcca(x, y).mean)),
        "pwcca, released": ("pwcca released", _both(lambda x, y: sim.pwcca(x, y).mean)),
        "pwcca, definition": ("pwcca definition", _both(
            lambda x, y: sim.pwcca(x, y, convention="definition").mean)),
        "streaming.cca_similarity svcca": ("svcca", partial(
            _stream, read=lambda st, sp: streaming.cca_similarity(st, spec=sp, method="svcca"),
            debiased=False)),
        "streaming.cca_similarity pwcca": ("pwcca released", partial(
            _stream, read=lambda st, sp: streaming.cca_similarity(st, spec=sp, method="pwcca"),
            debiased=False)),
        "procrustes (1 - d^2/2)": ("procrustes", _both(
            lambda x, y: 1.0 - sim.procrustes_distance(x, y, squared=True) / 2)),
    }


CCA_FAMILY = ("cca", "svcca", "pwcca released", "pwcca definition", "procrustes")


def measure(n: int, d: int, cca_only: bool = False) -> dict:
    x, y = relu_pair(n, d)
    batches = [slice(s, s + n // 4) for s in range(0, n, n // 4)]
    want = references(x, y, batches, cca_only)
    out = {}
    for name, (key, fn) in forms(batches).items():
        if key not in want:
            continue
        if key in CCA_FAMILY[:4] and n - 1 < 2 * d:
            continue  # ill-posed (see the module docstring)
        row = {"reference": float(want[key])}
        for dtype in ("float32", "float64"):
            errors, self_errors = [], []
            t0 = time.perf_counter()
            with jax.enable_x64(dtype == "float64"):
                for scale in SCALES:
                    pair, own = fn((x * scale).astype(dtype), (y * scale).astype(dtype))
                    errors.append(abs(float(pair) - want[key]))
                    self_errors.append(abs(float(own) - 1.0))
            row[dtype] = {"max_abs_error": max(errors), "max_self_error": max(self_errors),
                          "errors_by_scale": dict(zip(map(str, SCALES), errors, strict=True)),
                          "seconds": time.perf_counter() - t0}
        out[name] = row
        print(f"n={n} d={d} {name:40s} f32 {row['float32']['max_abs_error']:.1e} "
              f"(self {row['float32']['max_self_error']:.1e})  f64 "
              f"{row['float64']['max_abs_error']:.1e}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["1000x64", "1000x512", "5120x512:cca"],
                   help="NxD, or NxD:cca for the CCA family and Procrustes only")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "similarity_accuracy.json"))
    args = p.parse_args()
    sizes = [(*map(int, s.split(":")[0].split("x")), s.endswith(":cca")) for s in args.sizes]
    results = {"scales": SCALES,
               "by_size": {f"{n}x{d}": measure(n, d, cca) for n, d, cca in sizes}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    names = list(dict.fromkeys(k for r in results["by_size"].values() for k in r))
    head = " | ".join(f"float32, n x d = {s}" for s in results["by_size"])
    print(f"\n| form | {head} | float64, all sizes |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for name in names:
        rows = [r.get(name) for r in results["by_size"].values()]
        f32 = " | ".join(f"{r['float32']['max_abs_error']:.0e}" if r else "-" for r in rows)
        f64 = max(r["float64"]["max_abs_error"] for r in rows if r)
        print(f"| {name} | {f32} | {f64:.0e} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
