"""Initialisation strategies: exact copies where they copy, honest statistics where they draw."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.config import ConfigError
from transfusion_jax.init import initialize, initialize_sequence, parse_init_config
from transfusion_jax.init.gabor import gabor_bank
from transfusion_jax.models import build_model
from transfusion_jax.weights import WeightMismatchError, flatten

X = jnp.zeros((1, 16, 16, 3))


def variables_of(model, seed):
    return model.init(jax.random.PRNGKey(seed), X)


@pytest.fixture(scope="module")
def setting():
    """A 'pretrained' source (random weights with a distinct mean/scale per tensor) and the
    template of the same architecture."""
    model = build_model("cbr_small", 10, width=0.25)
    source = variables_of(model, 0)
    rng = np.random.default_rng(0)
    flat = flatten(source)
    shifted = {p: np.asarray(v) * rng.uniform(0.5, 3) + rng.uniform(-1, 1) for p, v in flat.items()}
    from transfusion_jax.weights import unflatten

    return model, unflatten(shifted), variables_of(model, 1)


def equal(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def blocks_equal(result, source, block) -> bool:
    src = flatten(source)
    return all(equal(v, src[p]) for p, v in flatten(result).items() if p.split("/")[1] == block)


def test_pretrained_copies_everything_and_lists_mismatches(setting):
    model, source, template = setting
    out = initialize("pretrained", jax.random.PRNGKey(0), template, source=source)
    assert all(equal(v, flatten(source)[p]) for p, v in flatten(out).items())
    other = variables_of(build_model("cbr_small", 3, width=0.25), 2)  # a new 3-class head
    with pytest.raises(WeightMismatchError,
                       match=r"params/head/kernel: model \(64, 3\), file \(64, 10\)"):
        initialize("pretrained", jax.random.PRNGKey(0), other, source=source)
    out = initialize("pretrained", jax.random.PRNGKey(0), other, source=source,
                     dont_load=("^head/",))
    fresh = initialize("random", jax.random.PRNGKey(0), other)
    assert equal(out["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    assert blocks_equal(out, source, "block3")
    with pytest.raises(ConfigError, match="needs pretrained weights"):
        initialize("pretrained", jax.random.PRNGKey(0), template)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_transfusion_copies_exactly_the_prefix(setting, k):
    model, source, template = setting
    blocks = model.block_names()  # block1..block4, head
    out = initialize("transfusion", jax.random.PRNGKey(3), template, source=source, k=k,
                     blocks=blocks)
    for i, block in enumerate(blocks):
        copied = blocks_equal(out, source, block)
        assert copied == (i < k), (block, k)
    if k < len(blocks):  # the rest is a fresh random init, not the template
        assert not blocks_equal(out, template, blocks[-1])
    with pytest.raises(ConfigError, match="must be in"):
        initialize("transfusion", jax.random.PRNGKey(0), template, source=source, k=9,
                   blocks=blocks)


def test_reinit_and_slim(setting):
    model, source, template = setting
    blocks = model.block_names()
    out = initialize("reinit", jax.random.PRNGKey(0), template, source=source, n=2,
                     blocks=blocks)
    assert [blocks_equal(out, source, b) for b in blocks] == [True, True, True, False, False]
    slim = build_model("cbr_small", 10, channels=(32, 64, 64, 64), width=0.25)
    slim_template = variables_of(slim, 5)
    out = initialize("slim", jax.random.PRNGKey(0), slim_template, source=source,
                     through="block2", blocks=slim.block_names())
    assert blocks_equal(out, source, "block1") and blocks_equal(out, source, "block2")
    assert out["params"]["block3"]["conv"]["kernel"].shape == (7, 7, 16, 16)  # thinner top
    with pytest.raises(ConfigError, match="through='block9' is not a block"):
        initialize("slim", jax.random.PRNGKey(0), slim_template, source=source,
                   through="block9", blocks=slim.block_names())


def moments_within_ci(sample: np.ndarray, mean: float, std: float) -> bool:
    """Sample mean and variance within 5 standard errors of N(mean, std^2)'s."""
    n = sample.size
    mean_ok = abs(sample.mean() - mean) < 5 * std / np.sqrt(n)
    var_ok = abs(sample.var() - std**2) < 5 * std**2 * np.sqrt(2 / (n - 1))
    return bool(mean_ok and var_ok)


def test_mean_var_per_tensor_matches_source_moments(setting):
    model, source, template = setting
    out = initialize("mean_var", jax.random.PRNGKey(0), template, source=source)
    src, got = flatten(source), flatten(out)
    for path in ("params/block3/conv/kernel", "params/block4/conv/kernel",
                 "params/head/kernel"):
        s, g = np.asarray(src[path], np.float64), np.asarray(got[path], np.float64)
        assert moments_within_ci(g, s.mean(), s.std()), path
        assert not np.allclose(g, s)
    assert np.all(np.asarray(got["batch_stats/block1/bn/var"]) == 1)  # statistics reset


def test_mean_var_per_channel_and_batchnorm_options(setting):
    model, source, template = setting
    out = initialize("mean_var", jax.random.PRNGKey(1), template, source=source,
                     per="channel", batchnorm="pretrained")
    s = np.asarray(source["params"]["block4"]["conv"]["kernel"], np.float64)
    g = np.asarray(out["params"]["block4"]["conv"]["kernel"], np.float64)
    for c in range(s.shape[-1]):
        assert moments_within_ci(g[..., c], s[..., c].mean(), s[..., c].std()), c
    assert equal(out["params"]["block2"]["bn"]["scale"], source["params"]["block2"]["bn"]["scale"])
    reset = initialize("mean_var", jax.random.PRNGKey(1), template, source=source,
                       batchnorm="reset")
    assert np.all(np.asarray(reset["params"]["block2"]["bn"]["scale"]) == 1)


def test_shuffled_is_a_permutation_of_each_tensor(setting):
    model, source, template = setting
    out = initialize("shuffled", jax.random.PRNGKey(0), template, source=source)
    for path, value in flatten(out).items():
        s = np.asarray(flatten(source)[path])
        assert np.array_equal(np.sort(value, axis=None), np.sort(s, axis=None)), path
        if s.size > 20 and np.unique(s).size > 1:  # a constant tensor is its own shuffle
            assert not np.array_equal(np.asarray(value), s), path


def test_gabor_first_conv_and_random_rest(setting):
    model, source, template = setting
    out = initialize("gabor", jax.random.PRNGKey(0), template, blocks=model.block_names())
    kernel = np.asarray(out["params"]["block1"]["conv"]["kernel"])  # (7, 7, 3, 8)
    bank = gabor_bank(7, kernel.shape[-1])
    for c in range(kernel.shape[-1]):
        for i in range(kernel.shape[2]):  # the same filter on every input channel
            assert np.corrcoef(kernel[:, :, i, c].ravel(), bank[:, :, c].ravel())[0, 1] > 0.999
    he_std = np.sqrt(2 / (7 * 7 * 3))
    assert kernel.std() == pytest.approx(he_std, rel=0.2)
    random = initialize("random", jax.random.PRNGKey(0), template)
    assert equal(out["params"]["block2"]["conv"]["kernel"],
                 random["params"]["block2"]["conv"]["kernel"])


def test_sequence_composes_and_config_parsing(setting):
    model, source, template = setting
    steps = parse_init_config("pretrained+gabor", {"gabor": {"rest": "keep"}})
    assert steps == [("pretrained", {}), ("gabor", {"rest": "keep"})]
    out = initialize_sequence(steps, jax.random.PRNGKey(0), template, source=source,
                              blocks=model.block_names())
    assert blocks_equal(out, source, "block2")
    assert not equal(out["params"]["block1"]["conv"]["kernel"],
                     source["params"]["block1"]["conv"]["kernel"])
    with pytest.raises(ConfigError, match="must be keyed by those names"):
        parse_init_config("pretrained+gabor", {"k": 2})
