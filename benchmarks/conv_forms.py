"""Where ``model.conv_impl=auto`` gets its CPU choice: each convolution form, timed per kind.

    python benchmarks/conv_forms.py               # all CPUs
    python benchmarks/conv_forms.py --threads 2

For each kind of convolution the zoo has (kxk on large and on small maps, kernels as wide as
the map, 1x1, depthwise, a 7x7 stem), times one jitted forward pass plus both gradients in
XLA's form and in the matrix-product form (`transfusion_jax.models.conv_matmul`), interleaved
round by round, best round kept, and prints which is faster next to the form
`transfusion_jax.models.conv.cpu_form` (``auto`` on CPU) picks. ``agrees`` is False where
the rule picks the clearly slower form (a test fails then: re-check the rule on a new CPU).

Writes ``benchmarks/results/conv_forms_cpu.json`` (or ``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                        "conv_forms_cpu.json"))
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    from bench_utils import pin_threads

    pin_threads(ARGS.threads)
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_utils import interleaved_best, machine_state, markdown_table  # noqa: E402

from transfusion_jax.models.conv import Conv, cpu_form  # noqa: E402

# name -> (input (n, h, w, c), kernel, stride, groups, output channels); batch 64 as the
# quickstart, 16 for the 56x56 map.
KINDS = {
    "5x5, 1->16 on 28x28 (CBR-Tiny block 1)": ((64, 28, 28, 1), 5, 1, 1, 16),
    "5x5, 16->32 on 14x14 (CBR-Tiny block 2)": ((64, 14, 14, 16), 5, 1, 1, 32),
    "5x5, 32->64 on 7x7 (CBR-Tiny block 3)": ((64, 7, 7, 32), 5, 1, 1, 64),
    "5x5, 64->128 on 4x4 (kernel wider than the map)": ((64, 4, 4, 64), 5, 1, 1, 128),
    "3x3, 64->64 on 8x8 (ResNet-18 at 32 px)": ((64, 8, 8, 64), 3, 1, 1, 64),
    "3x3, 128->128 on 4x4": ((64, 4, 4, 128), 3, 1, 1, 128),
    "3x3, 256->256 on 2x2": ((64, 2, 2, 256), 3, 1, 1, 256),
    "7x7 stride 2, 3->64 on 32x32 (ResNet stem)": ((64, 32, 32, 3), 7, 2, 1, 64),
    "3x3 stride 2, 3->32 on 75x75 (Inception-v3 stem)": ((16, 75, 75, 3), 3, 2, 1, 32),
    "3x3, 32->32 on 56x56": ((16, 56, 56, 32), 3, 1, 1, 32),
    "1x1, 64->256 on 56x56": ((16, 56, 56, 64), 1, 1, 1, 256),
    "1x1, 256->64 on 8x8": ((64, 8, 8, 256), 1, 1, 1, 64),
    "depthwise 3x3 on 16x16x96": ((64, 16, 16, 96), 3, 1, 96, 96),
    "depthwise 5x5 stride 2 on 8x8x144": ((64, 8, 8, 144), 5, 2, 144, 144),
}


def step(shape, kernel, stride, groups, c_out, impl):
    """A zero-argument callable: forward + input and kernel gradients of one layer."""
    layer = Conv(c_out, (kernel, kernel), stride, padding="SAME", feature_group_count=groups,
                 use_bias=False, impl=impl)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    params = layer.init(jax.random.key(0), x)

    @jax.jit
    def grads(params, x):
        return jax.grad(lambda p, v: jnp.sum(jnp.sin(layer.apply(p, v))), (0, 1))(params, x)

    return lambda: grads(params, x)


def main(args) -> None:
    report = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
              "machine": {"start": machine_state()}, "kinds": {}}
    rows = []
    for name, (shape, kernel, stride, groups, c_out) in KINDS.items():
        fns = {impl: step(shape, kernel, stride, groups, c_out, impl)
               for impl in ("xla", "im2col")}
        seconds = interleaved_best(fns, args.steps, args.rounds, jax.block_until_ready)
        out = -(-shape[1] // stride)
        picked = cpu_form((kernel, kernel), (out, out), shape[-1], groups, (stride, stride))
        fastest = min(seconds, key=seconds.get)
        report["kinds"][name] = {"input": shape, "kernel": kernel, "stride": stride,
                                 "groups": groups, "out_channels": c_out, "out": [out, out],
                                 "ms": {k: 1e3 * v for k, v in seconds.items()},
                                 "fastest": fastest, "auto_on_cpu": picked,
                                 "agrees": picked == fastest}
        tie = max(seconds.values()) < 1.25 * min(seconds.values())
        rows.append([name, f"{1e3 * seconds['xla']:.1f}", f"{1e3 * seconds['im2col']:.1f}",
                     fastest + " (tie)" * tie, picked,
                     "yes" if picked == fastest else "tie" if tie else "NO"])
        print(name, json.dumps(report["kinds"][name]), flush=True)
    report["machine"]["end"] = machine_state()
    report["table"] = markdown_table(["convolution (batch 64; 16 on 56x56)", "xla ms",
                                      "im2col ms", "fastest (tie: within 25%)", "auto picks",
                                      "agrees"], rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(report["table"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(ARGS)
