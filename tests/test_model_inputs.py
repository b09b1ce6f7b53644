"""torchvision's transform_input: ImageNet-normalised pixels back to Inception's [-1, 1]."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from transfusion_jax.models.inputs import IMAGENET_MEAN, IMAGENET_STD, imagenet_to_inception_range


def test_imagenet_normalised_pixels_map_to_minus_one_one():
    pixels = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)  # in [0, 1]
    normalised = (pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = imagenet_to_inception_range(jnp.asarray(normalised, jnp.float32), jnp.float32)
    np.testing.assert_allclose(np.asarray(out), 2 * pixels - 1, atol=1e-5)
