"""Batched sweeps equal per-pair loops, for stacked and mixed-width activations."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from tests import similarity_reference as ref
from transfusion_jax import similarity as sim


def _items(acts):
    """Per-pair loop order: item c * L + l."""
    if isinstance(acts, list):
        return [acts[l_][c] for c in range(acts[0].shape[0]) for l_ in range(len(acts))]
    return [acts[c, l_] for c in range(acts.shape[0]) for l_ in range(acts.shape[1])]


def _stacked(c=3, layers=2, n=30, d=6, seed=0):
    r = np.random.default_rng(seed)
    base = r.standard_normal((n, d))
    return np.stack([np.stack([base @ r.standard_normal((d, d)) + r.standard_normal((n, d))
                               for _ in range(layers)]) for _ in range(c)])


def _mixed(c=2, n=30, widths=(3, 7, 3), seed=1):
    r = np.random.default_rng(seed)
    return [r.standard_normal((c, n, w)) + 0.5 * r.standard_normal((c, n, 1)) for w in widths]


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("kind", ["stacked", "mixed"])
def test_matrix_equals_reference_loop(x64, debiased, kind):
    acts = _stacked() if kind == "stacked" else _mixed()
    items = _items(acts)
    want = np.array([[ref.linear_cka(a, b, debiased) for b in items] for a in items])
    for form, block in [("gram", 7), ("gram", None), ("feature", None)]:
        got = sim.linear_cka_matrix(acts, debiased=debiased, form=form, block_size=block)
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12, err_msg=form)


@pytest.mark.parametrize("per_item", [True, False])
def test_gram_form_item_loop_and_item_batch_agree(x64, monkeypatch, per_item):
    # CPU loops over items, accelerators batch them: both must give the reference matrix.
    assert sim.batched.per_item_grams(None) == (jax.default_backend() == "cpu")
    monkeypatch.setattr(sim.batched, "per_item_grams", lambda mesh: per_item)
    acts = _mixed(c=3)
    items = _items(acts)
    want = np.array([[ref.linear_cka(a, b, True) for b in items] for a in items])
    got = sim.linear_cka_matrix(acts, debiased=True, form="gram", block_size=8)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


def test_matrix_float32_equals_float64_within_tolerance():
    acts = _stacked(c=2, layers=3, n=50, d=8, seed=2)
    with jax.enable_x64(True):
        want = np.asarray(sim.linear_cka_matrix(acts))
    got = sim.linear_cka_matrix(acts.astype(np.float32), form="gram", block_size=16)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_pairs_and_to_reference_equal_loop(x64):
    acts = _mixed(c=3)
    items = _items(acts)
    pairs = np.array([[0, 4], [5, 1], [2, 2], [8, 3]])
    got = sim.linear_cka_pairs(acts, pairs, debiased=True)
    want = [ref.linear_cka(items[i], items[j], True) for i, j in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-8)
    to_ref = sim.linear_cka_to_reference(acts, reference=1)
    assert to_ref.shape == (3, 3)
    want = [[ref.linear_cka(acts[l_][1], acts[l_][c]) for l_ in range(3)] for c in range(3)]
    np.testing.assert_allclose(to_ref, want, rtol=1e-8)
    np.testing.assert_allclose(to_ref[1], 1.0, rtol=1e-12)
    mat = sim.as_array(sim.linear_cka_matrix(acts), sim.layout_of(acts))
    np.testing.assert_allclose(mat[1, 2, 0, 2], ref.linear_cka(acts[2][1], acts[2][0]), rtol=1e-8)


@pytest.mark.parametrize("method", ["cca", "svcca", "pwcca"])
def test_cca_family_pairs_equal_per_pair_functions(x64, method):
    acts = _mixed(c=2, n=40, widths=(3, 5))
    items = _items(acts)
    pairs = np.array([[0, 1], [1, 3], [2, 0], [3, 3]])
    got = sim.cca_pairs(acts, pairs, method=method, keep=0.9)
    fn = {"cca": sim.cca, "pwcca": sim.pwcca,
          "svcca": lambda a, b: sim.svcca(a, b, keep=0.9)}[method]
    want = [float(fn(items[i], items[j]).mean) for i, j in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)
    if method == "svcca":
        mat = sim.cca_matrix(acts, method=method, keep=0.9)
        np.testing.assert_allclose(mat, mat.T)
        np.testing.assert_allclose(mat[1, 3], want[1], rtol=1e-8)
    if method == "pwcca":
        to_ref = sim.cca_to_reference(acts, method=method)
        np.testing.assert_allclose(to_ref[0], 1.0, rtol=1e-8)


def test_sharded_over_four_cpu_devices_equals_single_device():
    """The Gram form split over a 4-device data mesh gives the single-device matrix."""
    code = textwrap.dedent("""
        import numpy as np, jax
        from transfusion_jax import similarity as sim
        from transfusion_jax import parallel
        assert jax.device_count() == 4
        r = np.random.default_rng(0)
        acts = r.standard_normal((2, 3, 40, 5)).astype(np.float32)
        one = sim.linear_cka_matrix(acts, form="gram", block_size=8,
                                    mesh=parallel.data_mesh(jax.devices()[:1]))
        four = sim.linear_cka_matrix(acts, form="gram", block_size=8)
        np.testing.assert_allclose(four, one, rtol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout


@pytest.mark.parametrize("block", [None, 1000])
def test_gram_form_float32_within_1e6_of_float64_on_relu_activations(block):
    """One 1,000-row block summed all 10^6 Gram products in one float32 matmul: 4e-4 off."""
    r = np.random.default_rng(0)
    z = r.standard_normal((1000, 8))
    x, y = (np.maximum(z @ r.standard_normal((8, 64)) + r.standard_normal((1000, 64)) + s, 0)
            for s in (0.5, 0.2))
    want = ref.linear_cka(x, y)
    got = sim.linear_cka_matrix([x[None].astype(np.float32), y[None].astype(np.float32)],
                                form="gram", block_size=block)
    assert abs(float(got[0, 1]) - want) < 1e-6
