"""Representations of stacked checkpoints (`analysis.activations`): the compiled map over
checkpoints equals each checkpoint's own forward pass, and padding never reaches the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from transfusion_jax.analysis.activations import make_stacked_forward, stacked_activation_batches
from transfusion_jax.models import build_model
from transfusion_jax.runs import stack

LAYERS = ["block1", "block3", "pre_logits"]


def _stacked_model(num_checkpoints: int = 3):
    model = build_model("cbr_tiny", 10, width=0.125)
    x = jnp.zeros((1, 28, 28, 1))
    trees = [jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(k), x))
             for k in range(num_checkpoints)]
    return model, trees, stack(trees)


def _one_by_one(model, trees, images):
    """The loop a user would write: each checkpoint alone, conv maps mean-pooled."""
    out = []
    for name in LAYERS:
        per = []
        for variables in trees:
            _, acts = model.apply(variables, jnp.asarray(images), train=False)
            a = np.asarray(acts[name])
            per.append(a.mean(axis=(1, 2)) if a.ndim == 4 else a)
        out.append(np.stack(per))
    return out


def test_stacked_batches_equal_each_checkpoint_and_drop_padding():
    model, trees, stacked = _stacked_model()
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(13, 28, 28, 1)).astype(np.float32)
    # Two batches of 8: the second holds 5 real examples and 3 padding rows (NaN).
    padded = np.concatenate([images, np.full((3, 28, 28, 1), np.nan, np.float32)])
    mask = np.r_[np.ones(13), np.zeros(3)].astype(np.float32)
    batches = [{"image": padded[s:s + 8], "mask": mask[s:s + 8]} for s in (0, 8)]
    compiled = make_stacked_forward(model, LAYERS, "mean_pool")
    mapped: list[int] = []

    def forward(variables, x):
        mapped.append(x.shape[0])
        return compiled(variables, x)

    kept: list[int] = []
    got = list(stacked_activation_batches(forward, stacked, batches, kept=kept))
    assert kept == [8, 5] and mapped == [8, 5]  # the padding rows are never mapped
    expected = _one_by_one(model, trees, images)
    for li in range(len(LAYERS)):
        joined = np.concatenate([np.asarray(b[li]) for b in got], axis=1)  # (C, 13, d)
        assert joined.shape == expected[li].shape
        np.testing.assert_allclose(joined, expected[li], rtol=1e-5, atol=1e-6)
    # max_examples stops inside a batch: only its first examples are mapped.
    kept = []
    got = list(stacked_activation_batches(forward, stacked, batches, max_examples=10,
                                          kept=kept))
    assert kept == [8, 2] and mapped[2:] == [8, 2] and got[1][0].shape[:2] == (3, 2)
    np.testing.assert_allclose(np.asarray(got[1][2]), expected[2][:, 8:10], rtol=1e-5,
                               atol=1e-6)
