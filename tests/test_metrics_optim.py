"""Metrics against scikit-learn, convergence tracking, schedules, losses, weight decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from transfusion_jax.config import ConfigError, base_config
from transfusion_jax.train.convergence import ConvergenceTracker
from transfusion_jax.train.losses import LOSSES
from transfusion_jax.train.metrics import ranking_metrics
from transfusion_jax.train.optim import decay_mask, lr_factors, make_optimizer, make_schedule


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _disagreeing_logits(seed: int, n: int = 300, k: int = 4):
    """Logits whose per-example offsets (a class-independent shift, invisible to softmax)
    reorder raw-logit one-vs-rest rankings, so ranking logits and probabilities disagree."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    logits += rng.normal(scale=3.0, size=(n, 1))  # softmax-invariant, rank-changing
    return logits, labels


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_auc_is_sklearn_ovr_on_softmax_probabilities(seed):
    logits, labels = _disagreeing_logits(seed)
    got = ranking_metrics(logits, labels, multi_label=False)
    probs = _softmax(logits)
    reference = roc_auc_score(labels, probs, multi_class="ovr")
    assert got["auc"] == pytest.approx(reference, abs=1e-12)
    onehot = np.eye(4)[labels]
    assert got["map"] == pytest.approx(average_precision_score(onehot, probs), abs=1e-12)
    # The old definition (one-vs-rest on raw logits) is a different number on these logits.
    assert abs(roc_auc_score(onehot, logits, average="macro") - reference) > 0.02


def test_binary_and_multilabel_auc_equal_sklearn_on_probabilities():
    logits, labels = _disagreeing_logits(7, k=2)
    binary = ranking_metrics(logits, labels, multi_label=False)
    p1 = _softmax(logits)[:, 1]
    assert binary["auc"] == pytest.approx(roc_auc_score(labels, p1), abs=1e-12)
    assert binary["map"] == pytest.approx(average_precision_score(labels, p1), abs=1e-12)
    rng = np.random.default_rng(1)
    multi = (rng.random((300, 3)) < 0.4).astype(np.float32)
    scores = rng.normal(size=(300, 3)) + 2 * multi + rng.normal(scale=3.0, size=(300, 1))
    got = ranking_metrics(scores, multi, multi_label=True)
    sigmoid = 1 / (1 + np.exp(-scores))  # per label: softmax would change the ranking
    assert got["auc"] == pytest.approx(roc_auc_score(multi, sigmoid, average="macro"))
    assert got["map"] == pytest.approx(average_precision_score(multi, sigmoid, average="macro"))
    assert abs(got["auc"] - roc_auc_score(multi, _softmax(scores), average="macro")) > 0.01


def test_auc_undefined_for_one_class_is_nan_not_crash():
    got = ranking_metrics(np.zeros((5, 2)), np.ones(5, int), multi_label=False)
    assert np.isnan(got["auc"]) and np.isnan(got["map"])
    # A class absent from the split is left out of the macro average.
    logits, labels = _disagreeing_logits(3)
    keep = labels != 3
    got = ranking_metrics(logits[keep], labels[keep], multi_label=False)
    probs = _softmax(logits[keep])
    onehot = np.eye(4)[labels[keep]][:, :3]
    assert got["auc"] == pytest.approx(roc_auc_score(onehot, probs[:, :3], average="macro"))


def test_convergence_tracker_records_first_crossing_only():
    t = ConvergenceTracker("accuracy", 0.9)
    assert not t.update(100, {"accuracy": 0.8})
    assert not t.update(200, {"accuracy": float("nan")})
    assert t.update(300, {"accuracy": 0.91})
    assert not t.update(400, {"accuracy": 0.95})
    assert t.to_dict()["steps_to_threshold"] == 300
    assert ConvergenceTracker.from_dict(t.to_dict()) == t
    low = ConvergenceTracker("loss", 0.1, "min")
    low.update(10, {"loss": 0.05})
    assert low.step == 10
    with pytest.raises(ConfigError, match="eval metrics are: accuracy"):
        ConvergenceTracker("auroc", 0.9).update(1, {"accuracy": 1.0})


def test_warmup_cosine_and_step_schedules():
    c = base_config().train
    c.steps, c.schedule.base_lr, c.schedule.warmup_steps = 100, 0.4, 10
    lr = make_schedule(c)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.2)
    assert float(lr(10)) == pytest.approx(0.4) and float(lr(100)) == pytest.approx(0.0)
    c.schedule.name, c.schedule.boundaries = "step", (50, 80)
    lr = make_schedule(c)
    assert [round(float(lr(s)), 6) for s in (10, 49, 50, 79, 80)] == [0.4, 0.4, 0.04, 0.04,
                                                                       0.004]


def test_weight_decay_applies_to_kernels_only():
    c = base_config().train
    c.schedule.name, c.schedule.base_lr, c.optimizer.momentum = "constant", 1.0, 0.0
    c.weight_decay = 0.1
    params = {"conv": {"kernel": jnp.ones(3)}, "bn": {"scale": jnp.ones(3)}}
    tx = make_optimizer(c)
    zero = {"conv": {"kernel": jnp.zeros(3)}, "bn": {"scale": jnp.zeros(3)}}
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.allclose(new["conv"]["kernel"], 0.9) and np.allclose(new["bn"]["scale"], 1.0)
    assert decay_mask("kernel$")(params) == {"conv": {"kernel": True}, "bn": {"scale": False}}


def test_losses_match_definitions():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    expected = -np.log(np.exp(2) / np.exp([2.0, 0.0, -1.0]).sum())
    assert float(LOSSES["softmax"](logits, jnp.array([0]))[0]) == pytest.approx(expected, 1e-6)
    p = 1 / (1 + np.exp(-np.array([2.0, 0.0, -1.0])))
    bce = -np.mean(np.log([p[0], 1 - p[1], p[2]]))
    got = LOSSES["sigmoid"](logits, jnp.array([[1.0, 0.0, 1.0]]))[0]
    assert float(got) == pytest.approx(bce, 1e-6)


def _sgd_config(**train):
    c = base_config().train
    c.schedule.name, c.schedule.base_lr, c.optimizer.momentum = "constant", 0.1, 0.9
    c.weight_decay = 0.01
    for key, value in train.items():
        c[key] = value
    return c


def test_lr_multipliers_scale_updates_and_freeze_stops_them():
    params = {"stem": {"conv": {"kernel": jnp.ones((3,)), "bias": jnp.ones((3,))}},
              "head": {"kernel": jnp.ones((3,)), "bias": jnp.ones((3,))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)

    def updates_after(steps, **train):
        tx = make_optimizer(_sgd_config(**train))
        state, out = tx.init(params), []
        for _ in range(steps):
            u, state = tx.update(grads, state, params)
            out.append(u)
        return out

    plain = updates_after(3)
    scaled = updates_after(3, lr_multipliers=(("^stem", 0.1),), freeze="head/bias")
    for u_plain, u_scaled in zip(plain, scaled, strict=True):
        np.testing.assert_allclose(u_scaled["stem"]["conv"]["kernel"],
                                   0.1 * u_plain["stem"]["conv"]["kernel"], rtol=1e-6)
        np.testing.assert_allclose(u_scaled["head"]["kernel"], u_plain["head"]["kernel"])
        assert not np.any(np.asarray(u_scaled["head"]["bias"]))  # frozen: no step, no decay


def test_lr_rules_that_match_nothing_or_are_malformed_are_config_errors():
    params = {"head": {"kernel": jnp.ones((2,))}}
    with pytest.raises(ConfigError, match=r"match no parameter.*head/kernel"):
        lr_factors(params, (("^stme", 0.1),))
    with pytest.raises(ConfigError, match="match no parameter"):
        lr_factors(params, (), "block9")
    with pytest.raises(ConfigError, match="pairs"):
        lr_factors(params, ("^head",))
    with pytest.raises(ConfigError, match="bad regex"):
        lr_factors(params, (("(", 1.0),))
    two = {"head": {"kernel": jnp.ones((2,)), "bias": jnp.ones((2,))}}
    assert lr_factors(two, (("kernel", 0.5), ("head", 2.0))) == {  # first match wins
        "head": {"kernel": 0.5, "bias": 2.0}}
