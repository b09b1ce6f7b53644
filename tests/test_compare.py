"""`compare` on Flax models and callables: the streamed matrix equals the in-memory similarity
of all examples at once, labelled and oriented as documented; the minibatch path equals the
engine's minibatch estimator; bad input gets one clear error; the heatmap is a PNG."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import ROOT
from transfusion_jax import similarity as sim
from transfusion_jax.compare import (
    CallableModel,
    CompareError,
    FlaxModel,
    SimilarityMatrix,
    compare,
)
from transfusion_jax.models import MODELS
from transfusion_jax.similarity import minibatch

N, SIZES = 40, (16, 16, 8)  # a short last batch: padded for the model, not recompiled
LA, LB = ["block1", "block3"], ["block2", "block4", "pre_logits"]  # shared: fewer compiles


@pytest.fixture(scope="module")
def zoo():
    """Two random inits of a slim CBR-Tiny, 40 random images and their full activations."""
    model = MODELS["cbr_tiny"](10, width=0.125)
    x = np.random.default_rng(0).standard_normal((N, 16, 16, 3)).astype(np.float32)
    init, apply = jax.jit(model.init), jax.jit(model.apply)
    va, vb = init(jax.random.PRNGKey(0), x[:2]), init(jax.random.PRNGKey(1), x[:2])
    return model, va, vb, x, apply(va, x)[1], apply(vb, x)[1]


def _batches(x, sizes=SIZES):
    starts = np.cumsum((0,) + sizes)
    return [x[s:e] for s, e in zip(starts[:-1], starts[1:], strict=True)]


def _reps(out, layers, reduction="mean_pool"):
    return [np.asarray(sim.reduce_conv(out[name], reduction, layout="NHWC")) for name in layers]


@pytest.mark.parametrize("debiased", [False, True])
def test_flax_matrix_equals_in_memory_linear_cka(zoo, debiased):
    model, va, vb, x, out_a, out_b = zoo
    layers_a, layers_b = LA, LB
    m = compare((model, va), (model, vb), _batches(x), layers_a, layers_b, debiased=debiased)
    assert isinstance(m, SimilarityMatrix)
    assert m.shape == (2, 3) and m.layers_a == tuple(layers_a) and m.layers_b == tuple(layers_b)
    assert (m.num_examples, m.method, m.estimator, m.debiased) == (N, "linear_cka", "full",
                                                                   debiased)
    want = np.array([[float(sim.linear_cka(a, b, debiased=debiased))
                      for b in _reps(out_b, layers_b)] for a in _reps(out_a, layers_a)])
    np.testing.assert_allclose(m.values, want, atol=2e-6)
    if not debiased:  # rows are model A: swapping the models transposes the matrix
        swapped = compare((model, vb), (model, va), _batches(x), layers_b, layers_a)
        np.testing.assert_allclose(swapped.values, m.values.T, atol=2e-6)


def test_layer_dict_and_module_paths(zoo):
    """A dict names the rows; a name outside `out` is a module path (capture_intermediates)."""
    model, va, vb, x, out_a, out_b = zoo
    layers = {"early": "block1", "conv of block2": "block2/conv", "late": "block4"}
    m = compare(FlaxModel(model, va), (model, vb), _batches(x), layers)
    assert m.layers_a == m.layers_b == ("early", "conv of block2", "late")

    @jax.jit
    def acts(variables):
        _, state = model.apply(variables, x, capture_intermediates=True,
                               mutable=["intermediates"])
        inter = state["intermediates"]
        return [inter["block1"]["__call__"][0], inter["block2"]["conv"]["__call__"][0],
                inter["block4"]["__call__"][0]]

    ra = [np.asarray(sim.mean_pool(a)) for a in acts(va)]
    rb = [np.asarray(sim.mean_pool(b)) for b in acts(vb)]
    want = np.array([[float(sim.linear_cka(a, b)) for b in rb] for a in ra])
    np.testing.assert_allclose(m.values, want, atol=2e-6)


def test_max_examples_stops_reading(zoo):
    model, va, vb, x, out_a, out_b = zoo
    pulled = []

    def batches():
        for b in _batches(x):
            pulled.append(len(b))
            yield {"image": b, "label": np.zeros(len(b))}

    m = compare((model, va), (model, vb), batches(), LA, LB, max_examples=24)
    assert pulled == [16, 16] and m.num_examples == 24  # the third batch is never read
    want = [[float(sim.linear_cka(a[:24], b[:24])) for b in _reps(out_b, LB)]
            for a in _reps(out_a, LA)]
    np.testing.assert_allclose(m.values, want, atol=2e-6)


def test_minibatch_estimator_matches_engine(zoo):
    model, va, vb, x, out_a, out_b = zoo
    sizes = (8, 8, 8, 8, 8)
    m = compare((model, va), (model, vb), _batches(x, sizes), LA, LB, estimator="minibatch")
    assert (m.estimator, m.debiased) == ("minibatch", True)
    items = _reps(out_a, LA) + _reps(out_b, LB)
    stats = minibatch.init(sim.layout_of([r[None] for r in items]))
    for batch in _batches(np.arange(N), sizes):
        stats = minibatch.update(stats, [r[None, batch] for r in items])
    np.testing.assert_allclose(m.values, np.asarray(minibatch.cka(stats))[:2, 2:], atol=2e-6)
    # With a single batch the minibatch estimator is the debiased full-data CKA.
    one = compare((model, va), (model, vb), [x[:16]], LA, LB, estimator="minibatch")
    full = compare((model, va), (model, vb), [x[:16]], LA, LB, debiased=True)
    np.testing.assert_allclose(one.values, full.values, atol=1e-5)


def test_cca_method_and_flatten_positions(zoo):
    model, va, vb, x, out_a, out_b = zoo
    m = compare((model, va), (model, vb), _batches(x), ["block1", "block2"], method="cca")
    ra, rb = _reps(out_a, ["block1", "block2"]), _reps(out_b, ["block1", "block2"])
    want = np.array([[float(sim.cca(a, b).mean) for b in rb] for a in ra])
    np.testing.assert_allclose(m.values, want, atol=1e-4)
    # flatten_positions: every position is a row (the maps must share h x w).
    m = compare((model, va), (model, vb), _batches(x), ["block1"], reduction="flatten_positions")
    (a,), (b,) = (_reps(o, ["block1"], "flatten_positions") for o in (out_a, out_b))
    assert m.values[0, 0] == pytest.approx(float(sim.linear_cka(a, b)), abs=2e-6)
    with pytest.raises(CompareError, match="same h x w"):
        compare((model, va), (model, vb), _batches(x), ["block1", "block2"],
                reduction="flatten_positions")


def test_callable_channels_first_equals_flax(zoo):
    """A callable returning NCHW maps (layout='nchw') gives the Flax adapter's matrix."""
    model, va, vb, x, out_a, out_b = zoo
    apply = jax.jit(model.apply)

    def nchw(variables):
        def f(images):
            out = apply(variables, images)[1]
            return {k: np.moveaxis(np.asarray(v), -1, 1) if v.ndim == 4 else v
                    for k, v in out.items()}
        return CallableModel(f, layout="nchw")

    m = compare(nchw(va), nchw(vb), [(b, None) for b in _batches(x)], LA, LB)
    want = compare((model, va), (model, vb), _batches(x), LA, LB)
    np.testing.assert_allclose(m.values, want.values, atol=1e-6)


def test_errors_are_clear(zoo):
    model, va, vb, x, *_ = zoo
    pair = ((model, va), (model, vb))
    with pytest.raises(CompareError, match=r"unknown layer\(s\) \['block9'\].*block1, block2"):
        compare(*pair, _batches(x), ["block1", "block9"])
    with pytest.raises(CompareError, match="yielded no examples"):
        compare(*pair, iter([]), ["block1"])
    with pytest.raises(CompareError, match="16 examples to model A and 15 to model B"):
        compare((model, va), FlaxModel(model, vb, get_input=lambda b: b[1:]), _batches(x),
                ["block1"])
    tokens = CallableModel(lambda b: {"tokens": np.ones((len(b), 3, 4))})
    with pytest.raises(CompareError, match=r"shape \(16, 3, 4\); expected \(n, d\)"):
        compare(tokens, tokens, _batches(x), ["tokens"])
    with pytest.raises(CompareError, match="without its variables"):
        compare(model, (model, vb), _batches(x), ["block1"])
    with pytest.raises(CompareError, match="estimator='minibatch'"):
        compare(*pair, _batches(x), ["block1"], method="rbf_cka")
    with pytest.raises(CompareError, match="unknown conv reduction"):
        compare(*pair, _batches(x), ["block1"], reduction="max_pool")
    with pytest.raises(CompareError, match="input key 'image'"):
        compare(*pair, [{"pixels": x}], ["block1"])
    with pytest.raises(CompareError, match=r"write \['block1'\]"):
        compare(*pair, _batches(x), "block1")


def test_plot_csv_and_lookup(zoo, tmp_path):
    model, va, vb, x, *_ = zoo
    m = compare((model, va), (model, vb), _batches(x), LA,
                {"b2": "block2", "b4": "block4", "pool": "pre_logits"}, names=("init 0", "init 1"))
    fig = m.plot()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == LA
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b2", "b4", "pool"]
    assert "rows: init 0, columns: init 1" in ax.get_title()
    assert len(ax.texts) == 6
    path = tmp_path / "m.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = m.to_csv(tmp_path / "m.csv")
    rows = list(csv.reader(io.StringIO((tmp_path / "m.csv").read_text())))
    assert text == (tmp_path / "m.csv").read_text()
    assert rows[0] == ["init 0 \\ init 1", "b2", "b4", "pool"]
    assert [r[0] for r in rows[1:]] == LA
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], float), m.values, rtol=1e-7)
    assert m["block3", "pool"] == m.values[1, 2] and m.to_dict()["block1"]["b4"] == m.values[0, 1]
    assert m["block1"] == dict(zip(["b2", "b4", "pool"], m.values[0], strict=True))
    with pytest.raises(KeyError, match="not a layer of init 1"):
        m["block1", "block3"]
    assert "rows: init 0, columns: init 1" in repr(m)


def test_import_stays_light_and_similarity_a_leaf():
    """``import transfusion_jax`` loads no JAX; similarity never imports the compare front
    end; ``transfusion_jax.compare`` resolves lazily."""
    code = ("import sys, transfusion_jax as t; assert 'jax' not in sys.modules; "
            "import transfusion_jax.similarity; "
            "assert not [m for m in sys.modules if m.startswith('transfusion_jax.compare')]; "
            "assert callable(t.compare.compare); assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
