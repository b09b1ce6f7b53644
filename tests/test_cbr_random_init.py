"""The CBR family's structure and the random initializer's statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.config import ConfigError
from transfusion_jax.init import INITIALIZERS, initialize
from transfusion_jax.models import MODELS, build_model


def param_count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,channels,kernel", [
    ("cbr_large_tall", (32, 64, 128, 256, 512), 7),
    ("cbr_large_wide", (64, 128, 256, 512), 7),
    ("cbr_small", (32, 64, 128, 256), 7),
    ("cbr_tiny", (64, 128, 256, 512), 5),
])
def test_cbr_parameter_count_from_the_paper_table(name, channels, kernel):
    model = build_model(name, 5)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 64, 64, 3))))
    ins = (3, *channels[:-1])
    # conv (no bias) + BatchNorm scale/bias per block, then the linear head.
    expected = sum(kernel * kernel * i * o + 2 * o for i, o in zip(ins, channels, strict=True))
    expected += channels[-1] * 5 + 5
    assert param_count(variables["params"]) == expected
    assert model.block_names() == (*[f"block{i + 1}" for i in range(len(channels))], "head")
    assert tuple(variables["params"]) == model.block_names()


def test_cbr_outputs_and_pooling():
    model = build_model("cbr_large_tall", 3, width=0.125)
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    logits, out = model.apply(variables, x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    # Max-pool after the first four blocks only: 32 -> 16 -> 8 -> 4 -> 2 -> 2.
    assert [out[f"block{i}"].shape[1] for i in range(1, 6)] == [16, 8, 4, 2, 2]
    assert out["pre_logits"].shape == (2, 64) and set(out) >= {"logits", "pre_logits"}


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build_model("cbr_tiny", 4, width=0.125, dtype=jnp.bfloat16)
    x = jnp.ones((2, 16, 16, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    logits, out = model.apply(variables, x)
    assert logits.dtype == jnp.float32 and out["block1"].dtype == jnp.bfloat16


def test_unknown_model_and_options_are_named():
    with pytest.raises(ConfigError, match="valid models: .*cbr_tiny"):
        build_model("resnet5", 10)
    with pytest.raises(ConfigError, match="bad options for model 'cbr_tiny'"):
        build_model("cbr_tiny", 10, depth=3)
    assert "cbr_small" in MODELS


@pytest.mark.parametrize("scheme,gain,fan", [
    ("he_normal", 2.0, "in"), ("lecun_normal", 1.0, "in"), ("he_normal_fan_out", 2.0, "out"),
])
def test_random_init_matches_the_scheme_variance(scheme, gain, fan):
    template = {"params": {"conv": {"kernel": jnp.zeros((5, 5, 64, 128))},
                           "bn": {"scale": jnp.zeros(128), "bias": jnp.ones(128)}},
                "batch_stats": {"bn": {"mean": jnp.ones(128), "var": jnp.zeros(128)}}}
    out = initialize("random", jax.random.PRNGKey(0), template, scheme=scheme)
    w = np.asarray(out["params"]["conv"]["kernel"])
    fan_value = 5 * 5 * (64 if fan == "in" else 128)
    std = np.sqrt(gain / fan_value)
    # 204,800 draws: the sample std is within 1% of the target with overwhelming probability.
    assert w.std() == pytest.approx(std, rel=0.01) and abs(w.mean()) < 0.01 * std
    assert np.all(out["params"]["bn"]["scale"] == 1) and np.all(out["params"]["bn"]["bias"] == 0)
    assert np.all(out["batch_stats"]["bn"]["var"] == 1)
    assert np.all(out["batch_stats"]["bn"]["mean"] == 0)


def test_random_init_is_seeded_and_errors_are_named():
    template = {"params": {"k": {"kernel": jnp.zeros((8, 8))}}}
    a = initialize("random", jax.random.PRNGKey(1), template)
    b = initialize("random", jax.random.PRNGKey(1), template)
    c = initialize("random", jax.random.PRNGKey(2), template)
    assert np.array_equal(a["params"]["k"]["kernel"], b["params"]["k"]["kernel"])
    assert not np.array_equal(a["params"]["k"]["kernel"], c["params"]["k"]["kernel"])
    with pytest.raises(ConfigError, match="valid initializers: .*random"):
        initialize("mean_varr", jax.random.PRNGKey(0), template)
    with pytest.raises(ConfigError, match="unknown random scheme 'kaiming'"):
        initialize("random", jax.random.PRNGKey(0), template, scheme="kaiming")
    assert "random" in INITIALIZERS
