"""Feature visualisation: the objective rises, outputs are valid images, seeds behave, the
vmapped forms equal separate calls, and the parameterisation is the documented one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transfusion_jax.analysis.feature_vis import (
    COLOR_MATRIX,
    Transforms,
    bilinear_sample,
    decorrelate_colors,
    objective_gain,
    plot_feature_vis,
    random_transform,
    to_valid_image,
    visualize_channels,
)
from transfusion_jax.models import build_model

SIZE, STEPS, LAYER = 32, 48, "block2"
SMALL = Transforms(jitter=1, jitter2=1)


@pytest.fixture(scope="module")
def tiny():
    """A random-init grey cbr_tiny and three ``block2`` channels alive on a grey image."""
    model = build_model("cbr_tiny", 10, width=0.125)
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1)))
    _, out = model.apply(variables, jnp.full((1, SIZE, SIZE, 1), 0.5))
    alive = np.flatnonzero(np.asarray(out[LAYER][0].mean((0, 1))) > 0.01)
    return model, variables, [int(c) for c in alive[:3]]


def run(model, variables, channels, **kw):
    options = dict(size=SIZE, steps=STEPS, channels_in=1, transforms=SMALL)
    return visualize_channels(model, variables, LAYER, channels, **(options | kw))


@pytest.fixture(scope="module")
def base(tiny):
    model, variables, channels = tiny
    return run(model, variables, channels)


def test_objective_rises_and_images_are_valid(tiny, base):
    _, _, channels = tiny
    assert base.images.shape == (3, SIZE, SIZE, 1)
    assert base.trace.shape == (3, STEPS)
    assert base.images.min() >= 0.0 and base.images.max() <= 1.0
    start, end = base.trace[:, :3].mean(1), base.trace[:, -5:].mean(1)
    assert np.all(end > 1.5 * start + 0.05), (start, end)  # about 2-4x on this net
    assert base.images.std() > 0.05  # it drew something, not the grey start


def test_deterministic_and_seed_dependent(tiny, base):
    model, variables, channels = tiny
    again = run(model, variables, channels)
    np.testing.assert_array_equal(again.images, base.images)
    np.testing.assert_array_equal(again.trace, base.trace)
    other = run(model, variables, channels, seed=1)
    assert np.abs(other.images - base.images).max() > 0.1


def test_vmap_over_channels_equals_per_channel_calls(tiny, base):
    model, variables, channels = tiny
    swapped = run(model, variables, channels[::-1])
    np.testing.assert_allclose(swapped.images[::-1], base.images, atol=1e-4)
    alone = run(model, variables, [channels[1]])
    np.testing.assert_allclose(alone.images[0], base.images[1], atol=1e-3)
    np.testing.assert_allclose(alone.trace[0], base.trace[1], rtol=1e-3, atol=1e-4)


def test_stacked_checkpoints_equal_separate_calls(tiny, base):
    model, variables, channels = tiny
    other = model.init(jax.random.key(1), jnp.zeros((1, SIZE, SIZE, 1)))
    second = run(model, other, channels)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), variables, other)
    both = run(model, stacked, channels, stacked=True)
    assert both.images.shape == (2, 3, SIZE, SIZE, 1)
    np.testing.assert_allclose(both.images[0], base.images, atol=1e-3)
    np.testing.assert_allclose(both.images[1], second.images, atol=1e-3)
    np.testing.assert_allclose(both.trace, np.stack([base.trace, second.trace]), rtol=1e-3,
                               atol=1e-4)


def test_zero_spectrum_is_uniform_grey():
    for channels in (1, 3):
        image = to_valid_image(jnp.zeros((2, channels, 16, 9)))
        assert image.shape == (16, 16, channels)
        np.testing.assert_allclose(image, 0.5, atol=1e-7)


def test_colour_decorrelation_is_lucids_matrix():
    lucid = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    expected = lucid / np.linalg.norm(lucid, axis=0).max()
    np.testing.assert_allclose(COLOR_MATRIX, expected, rtol=1e-6)
    pixels = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(decorrelate_colors(pixels), pixels @ expected.T, atol=1e-6)
    # The same through the whole parameterisation: one non-zero DC coefficient per channel.
    spectrum = np.zeros((2, 3, 8, 5), np.float32)
    spectrum[0, :, 0, 0] = [0.3, -0.2, 0.1]
    image = np.asarray(to_valid_image(jnp.asarray(spectrum)))
    logit = np.log(image / (1 - image))
    dc = np.array([0.3, -0.2, 0.1]) * 8 * 8 / 64 / 4  # scale size * size(1/f at DC) / n / 4
    np.testing.assert_allclose(logit, np.broadcast_to(dc @ expected.T, logit.shape), atol=1e-5)


def test_transforms_are_identity_at_zero_and_fill_outside():
    image = jax.random.uniform(jax.random.key(0), (12, 12, 3))
    still = Transforms(jitter=0, scale=(1.0, 1.0), degrees=0.0, jitter2=0)
    np.testing.assert_allclose(random_transform(image, jax.random.key(3), still), image,
                               atol=1e-6)
    rows, cols = jnp.meshgrid(jnp.arange(12.0), jnp.arange(12.0), indexing="ij")
    shifted = bilinear_sample(image, rows - 2, cols + 0.5, 0.25)
    np.testing.assert_allclose(shifted[:2], 0.25)
    np.testing.assert_allclose(shifted[2:, :-1], (image[:-2, :-1] + image[:-2, 1:]) / 2,
                               atol=1e-6)


def test_plot_writes_png(tmp_path, base):
    path = plot_feature_vis(np.stack([base.images, base.images]), tmp_path / "fv.png",
                            ["before", "after"], ["a", "b", "c"], title="t")
    assert (tmp_path / "fv.png").stat().st_size > 1000 and path.endswith("fv.png")


def test_bad_layer_and_channel_are_named(tiny):
    model, variables, _ = tiny
    with pytest.raises(ValueError, match="valid: block1"):
        visualize_channels(model, variables, "nope", [0], size=SIZE, channels_in=1)
    with pytest.raises(ValueError, match="out of range"):
        visualize_channels(model, variables, LAYER, [999], size=SIZE, channels_in=1)


def test_a_visualisation_whose_objective_does_not_rise_is_flat(base):
    gain, flat = objective_gain(base.trace)  # real runs on live channels: rising
    assert not flat.any() and np.all(gain > 0)
    # A dead channel (zero throughout), a constant objective, a falling one: flat.
    traces = np.stack([base.trace[0], np.zeros(STEPS), np.full(STEPS, 3.0),
                       np.linspace(3.0, 2.0, STEPS), np.linspace(3.0, 3.0001, STEPS)])
    gain, flat = objective_gain(traces)
    assert flat.tolist() == [False, True, True, True, True]
    assert gain[3] < 0
