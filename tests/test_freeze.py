"""Frozen layers stay put: parameters, BatchNorm statistics and features, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import smoke_config
from transfusion_jax.checkpoints import Checkpointer, abstract_like
from transfusion_jax.train.freeze import frozen_batchnorm, frozen_modules
from transfusion_jax.train.loop import train_and_evaluate
from transfusion_jax.train.setup import abstract_state, build_run, initial_state

HEAD_ONLY = "^(?!head/)"  # the recipes' frozen-features mode: every layer but the head


def _restore(config, workdir, step):
    ckpt = Checkpointer(workdir / "checkpoints")
    try:
        target = abstract_like(abstract_state(config, build_run(config)),
                               jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        return ckpt.restore(step, target)[0]
    finally:
        ckpt.close()


def _eval_outputs(config, variables):
    """Every named output of the model at evaluation on 64 test images."""
    from transfusion_jax.data import eval_batches

    setup = build_run(config)
    batch = next(iter(eval_batches(setup.eval_source, config.data, 64, 1)))
    _, out = setup.model.apply(variables, jnp.asarray(batch["image"]), train=False)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def head_only_runs(data_dir, tmp_path_factory):
    runs = {}
    for track in (False, True):
        config = smoke_config(data_dir, **{"train.freeze": HEAD_ONLY, "train.steps": 8,
                                           "train.freeze_batch_stats": not track})
        workdir = tmp_path_factory.mktemp("track" if track else "frozen")
        train_and_evaluate(config, workdir)
        runs[track] = (config, _restore(config, workdir, 0), _restore(config, workdir, 8))
    return runs


def test_head_only_mode_keeps_every_non_head_output_bit_equal(head_only_runs):
    config, start, end = head_only_runs[False]
    for a, b in zip(jax.tree.leaves(start.batch_stats), jax.tree.leaves(end.batch_stats),
                    strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # statistics kept
    before, after = _eval_outputs(config, start.variables), _eval_outputs(config, end.variables)
    assert set(before) >= {"block1", "block2", "block3", "block4", "pre_logits", "logits"}
    for name in before:
        if name != "logits":
            assert np.array_equal(before[name], after[name]), name
    assert not np.array_equal(before["logits"], after["logits"])  # the head did train
    changed = [k for k in start.params if not all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(start.params[k]),
                               jax.tree.leaves(end.params[k]), strict=True))]
    assert changed == ["head"]


def test_tracking_frozen_batch_stats_is_an_explicit_option(head_only_runs):
    config, start, end = head_only_runs[True]
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(start.batch_stats), jax.tree.leaves(end.batch_stats), strict=True)]
    assert all(moved)  # train-mode BatchNorm follows the new data
    before, after = _eval_outputs(config, start.variables), _eval_outputs(config, end.variables)
    assert not np.array_equal(before["block4"], after["block4"])
    for a, b in zip(jax.tree.leaves(start.params["block1"]),
                    jax.tree.leaves(end.params["block1"]), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # parameters frozen either way


def test_frozen_batchnorm_computes_training_features_as_at_evaluation(data_dir):
    """In training too, a frozen block computes exactly what evaluation computes."""
    config = smoke_config(data_dir, **{"train.freeze": HEAD_ONLY})
    setup = build_run(config)
    state = initial_state(config, setup)
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.5, 2.0, v.shape), v.dtype),
                         state.batch_stats)  # non-trivial running averages
    variables = {"params": state.params, "batch_stats": stats}
    x = jnp.asarray(rng.normal(size=(8, 28, 28, 1)), jnp.float32)
    frozen = frozen_modules(state.params, (), HEAD_ONLY)
    assert "block1/bn" in frozen and "head" not in frozen
    _, eval_out = setup.model.apply(variables, x, train=False)
    with frozen_batchnorm(frozen):
        (_, train_out), updates = setup.model.apply(variables, x, train=True,
                                                    mutable=["batch_stats"])
    for name in ("block1", "block2", "block3", "block4", "pre_logits"):
        np.testing.assert_array_equal(np.asarray(train_out[name]), np.asarray(eval_out[name]))
    for a, b in zip(jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(stats),
                    strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    (_, plain), _ = setup.model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.array_equal(np.asarray(plain["block1"]), np.asarray(eval_out["block1"]))


def test_frozen_modules_are_those_with_every_parameter_frozen():
    params = {"block1": {"conv": {"kernel": 0}, "bn": {"scale": 0, "bias": 0}},
              "block2": {"conv": {"kernel": 0}, "bn": {"scale": 0, "bias": 0}},
              "head": {"kernel": 0, "bias": 0}}
    assert frozen_modules(params, (), "") == frozenset()
    assert frozen_modules(params, (), "^block1/") == {"block1", "block1/conv", "block1/bn"}
    # A zero learning-rate factor freezes too; a layer with one moving parameter does not.
    assert frozen_modules(params, (("^block2/bn/scale", 0.0),), "") == frozenset()
    assert frozen_modules(params, (("^block2/bn/", 0.0),), "kernel$") == {
        "block1/conv", "block2/conv", "block2/bn", "block2"}
