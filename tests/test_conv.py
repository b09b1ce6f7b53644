"""The convolution forms (`transfusion_jax.models.conv`) equal XLA's own convolution.

Layer by layer in float32 (forward, input and kernel gradients) over strides, dilation, every
padding mode, 1x1 / asymmetric / wide kernels, grouped and depthwise convolutions; parameters
identical to `flax.linen.Conv`'s; max-pools (`transfusion_jax.models.pool`) equal XLA's bit for
bit; and through whole models: every convolution and max-pool of every model of the zoo takes
the chosen form, and models give the same outputs and gradients in each form.
"""

from __future__ import annotations

import json
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT
from transfusion_jax.config import ConfigError
from transfusion_jax.models import MODELS, build_model
from transfusion_jax.models.conv import Conv, cpu_form
from transfusion_jax.models.pool import max_pool

# (input shape, kernel, strides, padding, kernel dilation, groups, output channels)
CASES = {
    "3x3_same": ((2, 9, 9, 3), (3, 3), 1, "SAME", 1, 1, 4),
    "3x3_stride2_odd_map": ((2, 9, 8, 3), (3, 3), 2, "SAME", 1, 1, 4),
    "5x5_valid_dilated": ((2, 11, 10, 3), (5, 5), 1, "VALID", 2, 1, 4),
    "5x5_kernel_wider_than_map": ((2, 4, 4, 8), (5, 5), 1, "SAME", 1, 1, 5),
    "3x3_on_1x1_map": ((2, 1, 1, 8), (3, 3), 1, "SAME", 1, 1, 6),
    "5x5_valid_on_1x1_map_is_empty": ((2, 1, 1, 8), (5, 5), 1, "VALID", 1, 1, 6),
    "7x7_stride2_stem": ((2, 10, 11, 3), (7, 7), 2, ((3, 3), (3, 3)), 1, 1, 4),
    "1x7_asymmetric": ((2, 10, 11, 4), (1, 7), 1, ((0, 0), (3, 3)), 1, 1, 4),
    "7x1_asymmetric": ((2, 10, 11, 4), (7, 1), 1, ((3, 3), (0, 0)), 1, 1, 4),
    "1x1": ((2, 5, 6, 8), (1, 1), 1, "VALID", 1, 1, 6),
    "1x1_stride2": ((2, 10, 11, 4), (1, 1), 2, "VALID", 1, 1, 6),
    "3x3_mixed_strides_uneven_padding": ((2, 10, 11, 4), (3, 3), (3, 2), ((2, 0), (1, 3)),
                                         (1, 2), 1, 6),
    "3x3_negative_padding": ((2, 10, 10, 4), (3, 3), 1, ((-1, 2), (1, -1)), 1, 1, 3),
    "depthwise_3x3": ((2, 9, 9, 6), (3, 3), 1, "SAME", 1, 6, 6),
    "depthwise_5x5_stride2_multiplier2": ((2, 9, 9, 6), (5, 5), 2, "SAME", 1, 6, 12),
    "depthwise_3x3_dilated_on_4x4": ((2, 4, 4, 6), (3, 3), 1, "SAME", 2, 6, 6),
    "grouped_3x3": ((2, 9, 9, 6), (3, 3), (2, 1), "SAME", 2, 3, 9),
    "circular": ((2, 7, 7, 3), (3, 3), 1, "CIRCULAR", 1, 1, 4),
    "reflect_stride2": ((2, 8, 8, 3), (5, 5), 2, "REFLECT", 1, 1, 4),
}


def _layers(case, impl, **kwargs):
    _, kernel, strides, padding, dilation, groups, c_out = case
    common = dict(strides=strides, padding=padding, kernel_dilation=dilation,
                  feature_group_count=groups, **kwargs)
    return Conv(c_out, kernel, impl=impl, **common), nn.Conv(c_out, kernel, **common)


def _close(got, want, rtol=2e-5):
    """Equal within float32 rounding: relative to the array's largest entry."""
    assert got.shape == want.shape
    if want.size == 0:
        return
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=rtol * float(np.abs(want).max()))


@pytest.mark.parametrize("impl", ["im2col", "auto"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_forms_equal_xla_forward_and_gradients(name, impl):
    case = CASES[name]
    layer, reference = _layers(case, impl, use_bias=True)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(case[0]), jnp.float32)
    params = reference.init(jax.random.key(1), x)
    shape = jax.eval_shape(reference.apply, params, x).shape
    cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)

    @jax.jit
    def forward_and_gradients(params, x, cotangent):
        results = []
        for module in (layer, reference):
            y, vjp = jax.vjp(module.apply, params, x)
            results.append((y, vjp(cotangent)))
        return results

    got, want = forward_and_gradients(params, x, cotangent)
    assert got[0].dtype == want[0].dtype == jnp.float32
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape
        _close(g, w)


def test_conv_forms_keep_bfloat16_compute():
    case = CASES["3x3_stride2_odd_map"]
    layer, reference = _layers(case, "im2col", dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(case[0]), jnp.float32)
    params = reference.init(jax.random.key(1), x)
    got, want = layer.apply(params, x), reference.apply(params, x)
    assert got.dtype == want.dtype == jnp.bfloat16
    _close(got, want, rtol=2e-2)


@pytest.mark.parametrize("impl", ["xla", "im2col", "auto"])
def test_parameters_are_flax_conv_parameters(impl):
    case = CASES["depthwise_5x5_stride2_multiplier2"]
    layer, reference = _layers(case, impl, use_bias=True,
                               kernel_init=nn.initializers.variance_scaling(2.0, "fan_out",
                                                                            "normal"))
    x = jnp.ones(case[0])
    got, want = layer.init(jax.random.key(3), x), reference.init(jax.random.key(3), x)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)


def test_bad_conv_impl_is_one_clear_error():
    with pytest.raises(ValueError, match="conv_impl='fast' is not valid; choose one of: "
                                         "auto, xla, im2col"):
        Conv(4, (3, 3), impl="fast")
    with pytest.raises(ConfigError, match=r"model.conv_impl='im2cl' is not valid \(did you "
                                          r"mean 'im2col'\?\)"):
        build_model("cbr_tiny", 10, conv_impl="im2cl")


def test_auto_on_cpu_picks_the_form_measured_faster():
    """`cpu_form` against the timings `benchmarks/conv_forms.py` recorded on a 2-core CPU:
    wherever one form was clearly faster (by more than 25%), the rule picks it."""
    record = json.loads((ROOT / "benchmarks" / "results" / "conv_forms_cpu.json").read_text())
    clear = 0
    for name, kind in record["kinds"].items():
        ms = kind["ms"]
        if max(ms.values()) < 1.25 * min(ms.values()):
            continue  # a tie: either form will do
        clear += 1
        picked = cpu_form((kind["kernel"],) * 2, kind["out"], kind["input"][-1], kind["groups"],
                          (kind["stride"],) * 2)
        assert picked == min(ms, key=ms.get), (name, ms, picked)
    assert clear >= 8  # the record covers every kind of convolution the rule tells apart
    assert cpu_form((3, 3), (8, 8), 64, 4) == "xla"  # grouped, not depthwise: unmeasured


POOLS = {
    "3x3_stride2_same": ((2, 9, 9, 3), (3, 3), (2, 2), "SAME"),
    "3x3_stride2_valid": ((2, 10, 11, 3), (3, 3), (2, 2), "VALID"),
    "3x3_stride1_padded": ((2, 8, 8, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
    "2x2_stride2_ceil_mode": ((2, 7, 7, 2), (2, 2), (2, 2), ((0, 1), (0, 1))),
    "28x28_after_relu_with_ties": ((4, 28, 28, 16), (3, 3), (2, 2), "SAME"),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_max_pool_forms_equal_xla_values_and_gradients(name):
    shape, window, strides, padding = POOLS[name]
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    if "relu" in name:
        x = jax.nn.relu(x)  # many equal zeros: the gradient goes to the first, as in XLA
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(
        nn.max_pool(x, window, strides, padding=padding).shape), jnp.float32)

    @jax.jit
    def values_and_gradients(x):
        return [jax.vjp(lambda v, impl=impl: max_pool(v, window, strides, padding, impl=impl),
                        x)[1](ct)[0] for impl in ("xla", "im2col")] + [
            max_pool(x, window, strides, padding, impl=impl) for impl in ("xla", "im2col")]

    want_grad, got_grad, want, got = values_and_gradients(x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_grad, want_grad)


# ------------------------------------------------------------------------------ the zoo

# Reduced widths where a model has the option; the smallest input each model takes well.
ZOO_OPTIONS = {
    "cbr_large_tall": ({"width": 0.125}, 32), "cbr_large_wide": ({"width": 0.125}, 32),
    "cbr_small": ({"width": 0.125}, 32), "cbr_tiny": ({"width": 0.125}, 32),
    "resnet18": ({"widths": (0.125,) * 4}, 32), "resnet34": ({"widths": (0.125,) * 4}, 32),
    "resnet50": ({"widths": (0.125,) * 4}, 32), "slim_resnet18": ({"top_width": 0.125}, 32),
    "slim_resnet50": ({"top_width": 0.125}, 32), "inception_v3": ({}, 75),
    "googlenet": ({}, 32), "efficientnet_lite0": ({}, 32), "efficientnet_lite2": ({}, 32),
}


def test_every_zoo_model_is_listed():
    assert set(ZOO_OPTIONS) == set(MODELS)


def _primitive_counts(jaxpr) -> Counter:
    """Primitive names in a jaxpr and the jaxprs nested in it; a custom-VJP call counts as
    ``custom_vjp:conv`` or ``custom_vjp:pool`` (its body is not entered)."""
    counts = Counter()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "custom_vjp_call":
            bwd = str(eqn.params["bwd"])
            counts["custom_vjp:conv" if "conv_bwd" in bwd else
                   "custom_vjp:pool" if "max_pool_bwd" in bwd else "custom_vjp:other"] += 1
            continue
        counts[eqn.primitive.name] += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    counts.update(_primitive_counts(inner))
    return counts


@pytest.mark.parametrize("name", sorted(ZOO_OPTIONS))
def test_every_convolution_and_max_pool_of_every_model_takes_the_chosen_form(name):
    options, size = ZOO_OPTIONS[name]
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(MODELS[name](5, **options).init, jax.random.key(0), x)
    n_convs = sum(k.ndim == 4 for k in jax.tree.leaves(variables["params"]))
    model = MODELS[name](5, conv_impl="im2col", **options)
    counts = _primitive_counts(jax.make_jaxpr(model.apply)(variables, x).jaxpr)
    assert counts["conv_general_dilated"] == 0
    assert counts["custom_vjp:conv"] == n_convs > 0
    assert counts["reduce_window_max"] == 0  # every max-pool takes the pool form too


def _f64_variables(model, x):
    from tests.test_models_zoo import numpy_variables

    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda a: np.asarray(a, np.float64), numpy_variables(abstract))


def _outputs_and_gradients(name, impl, x, variables, options):
    model = MODELS[name](5, conv_impl=impl, dtype=x.dtype, **options)

    def loss(params):
        logits, out = model.apply({**variables, "params": params}, x)
        return jnp.sum(jnp.sin(logits)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return out, grads


def _assert_same_model_function(name, options, size, impls=("im2col",), batch=2):
    """Eval-mode outputs (every block) and parameter gradients, in float64, equal ``xla``'s."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)))
    variables = _f64_variables(MODELS[name](5, **options), x)
    want = _outputs_and_gradients(name, "xla", x, variables, options)
    for impl in impls:
        got = _outputs_and_gradients(name, impl, x, variables, options)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            rtol = 1e-9 if w.dtype == jnp.float64 else 1e-6  # logits are cast to float32
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.abs(w).max()))


def test_quickstart_model_trains_the_same_in_every_form_float32():
    """CBR-Tiny as the quickstart trains it: train mode, float32, BatchNorm updates."""
    x = jnp.asarray(np.random.default_rng(0).random((8, 28, 28, 1)), jnp.float32)
    labels = jnp.arange(8) % 10
    results = {}
    for impl in ("xla", "im2col", "auto"):
        model = build_model("cbr_tiny", 10, conv_impl=impl, width=0.25)
        variables = model.init(jax.random.key(0), x[:1])

        def loss(params, model=model, variables=variables):
            (logits, out), updates = model.apply({**variables, "params": params}, x,
                                                 train=True, mutable=["batch_stats"])
            log_p = jax.nn.log_softmax(logits)
            return -jnp.mean(log_p[jnp.arange(8), labels]), (out, updates)

        results[impl] = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    for impl in ("im2col", "auto"):
        for g, w in zip(jax.tree.leaves(results[impl]), jax.tree.leaves(results["xla"]),
                        strict=True):
            _close(g, w, rtol=1e-4)


def test_resnet_computes_the_same_function_in_every_form(x64):
    options, size = ZOO_OPTIONS["resnet18"]
    _assert_same_model_function("resnet18", options, size, impls=("im2col", "auto"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO_OPTIONS))
def test_every_zoo_model_computes_the_same_function_in_every_form(name, x64):
    options, size = ZOO_OPTIONS[name]
    _assert_same_model_function(name, options, size, impls=("im2col", "auto"))


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("resnet50", 224), ("inception_v3", 299)])
def test_full_size_models_compute_the_same_gradients(name, size):
    """Full width at the native resolution, float32: outputs and gradients within float32
    rounding of XLA's (relative to each array's largest entry)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, 3)), jnp.float32)
    from tests.test_models_zoo import numpy_variables

    variables = numpy_variables(jax.eval_shape(MODELS[name](5).init, jax.random.key(0), x))
    want = _outputs_and_gradients(name, "xla", x, variables, {})
    got = _outputs_and_gradients(name, "im2col", x, variables, {})
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        _close(g, w, rtol=1e-3)


def test_a_model_mapped_over_runs_uses_matrix_products_on_cpu():
    """Vmapped over per-run kernels, XLA's convolution becomes a grouped convolution, which
    XLA:CPU runs slowly; `for_stacked_runs` (the vectorised group's model) turns ``auto``
    into the matmul form there, and keeps an explicit choice."""
    from tests.conftest import equations
    from transfusion_jax.models.conv import for_stacked_runs

    model = MODELS["cbr_tiny"](10, width=0.125)
    x = jnp.zeros((2, 28, 28, 1))
    one = model.init(jax.random.key(0), x)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a, a]), one)

    def grouped_convs(m):
        jaxpr = jax.make_jaxpr(jax.vmap(lambda v: m.apply(v, x)[0]))(stacked)
        return [e for e in equations(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"
                and e.params["feature_group_count"] > 1]

    assert grouped_convs(model)  # auto keeps XLA's form for CBR-Tiny's first blocks
    mapped = for_stacked_runs(model)
    assert mapped.conv_impl == "im2col" and not grouped_convs(mapped)
    assert for_stacked_runs(model.clone(conv_impl="xla")).conv_impl == "xla"
