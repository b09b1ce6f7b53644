"""The similarity job on a real (tiny) run: batched + streamed equals a plain loop."""

from __future__ import annotations

import csv

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_cli, smoke_config
from transfusion_jax.analysis.similarity_job import run_similarity_job
from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.data import eval_batches, open_source
from transfusion_jax.similarity import linear_cka, svcca
from transfusion_jax.train.loop import train_and_evaluate
from transfusion_jax.train.setup import build_run


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(smoke_config(data_dir), workdir)  # checkpoints 0, 8, 12
    return workdir


def sweep_config(run_dir, **overrides):
    config = load_config("configs/similarity_sweep.py")
    config.similarity.run_dir = str(run_dir)
    config.similarity.max_examples = 48
    config.similarity.batch_size = 32
    config.similarity.bootstrap, config.similarity.null = 8, 4  # cheap replicates
    for key, value in overrides.items():
        config.similarity[key] = value
    return config


def test_similarity_job_equals_a_per_checkpoint_loop(data_dir, run_dir, tmp_path):
    result = run_similarity_job(sweep_config(run_dir), tmp_path)
    steps, layers = result["steps"], result["layers"]
    assert steps == [0, 8, 12] and layers == ["block1", "block2", "block3", "block4",
                                              "pre_logits"]
    cka = result["linear_cka"]
    assert cka.shape == (3, 5, 3, 5) and not np.isnan(cka).any()
    # The loop a user would write: restore each checkpoint, run the model, mean-pool.
    from transfusion_jax.runs import Run

    run = Run.open(run_dir)
    config = smoke_config(data_dir)
    source, _ = open_source(config.data, config.data.eval_split)
    images = np.concatenate([b["image"] for b in eval_batches(source, config.data, 32)])[:48]
    model = build_run(config).model
    reps = []
    for step in run.steps:
        variables = run.read_variables(step)
        _, out = model.apply(variables, jnp.asarray(images))
        reps.append([np.asarray(out[name]).mean(axis=(1, 2)) if out[name].ndim == 4
                     else np.asarray(out[name]) for name in layers])
    for (c1, l1, c2, l2) in [(0, 0, 2, 0), (1, 3, 2, 3), (2, 0, 2, 4), (0, 2, 1, 1)]:
        expected = float(linear_cka(reps[c1][l1], reps[c2][l2]))
        assert cka[c1, l1, c2, l2] == pytest.approx(expected, abs=2e-4)
    expected = float(svcca(reps[0][2], reps[2][2], keep=0.99).mean)
    assert result["svcca"][0, 2, 2, 2] == pytest.approx(expected, abs=2e-3)
    assert np.isnan(result["svcca"][0, 0, 1, 1])  # a pair no figure shows: not computed
    assert np.allclose(np.einsum("clcl->cl", cka), 1, atol=1e-5)
    rows = list(csv.DictReader(open(tmp_path / "to_init.csv")))
    assert len(rows) == 15 and float(rows[0]["linear_cka_to_first"]) == pytest.approx(1, 1e-5)
    for name in ("to_init.png", "layers_final.png", "checkpoints.png", "similarity.npz",
                 "similarity_pairs.csv"):
        assert (tmp_path / name).stat().st_size > 1000


def test_similarity_job_errors_name_the_fix(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="not outputs of the model; valid: .*block1"):
        run_similarity_job(sweep_config(run_dir, layers=("block9",)), tmp_path)
    with pytest.raises(ConfigError, match=r"steps \[5\] are not checkpoints"):
        run_similarity_job(sweep_config(run_dir, steps=(0, 5)), tmp_path)
    with pytest.raises(ConfigError, match="is not a training run's workdir"):
        run_similarity_job(sweep_config(tmp_path), tmp_path)


def test_similarity_job_command_line(data_dir, run_dir, tmp_path):
    proc = run_cli(tmp_path, data_dir, f"--config.similarity.run_dir={run_dir}",
                   "--config.similarity.max_examples=32", "--config.similarity.pairs=plots",
                   "--config.similarity.bootstrap=4", "--config.similarity.null=2",
                   config="configs/similarity_sweep.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(tmp_path / "similarity.npz")
    assert data["linear_cka"].shape == (3, 5, 3, 5)
    assert np.isnan(data["linear_cka"][0, 0, 1, 1])  # only the figures' pairs


def test_similarity_job_intervals_null_bands_and_small_sample_warning(run_dir, tmp_path,
                                                                      caplog):
    """Issue 15 part 3: every table value of the figures' pairs has a bootstrap interval and
    a null band; SVCCA on 48 examples of up to 64 features is flagged in the table and log."""
    result = run_similarity_job(sweep_config(run_dir, bootstrap=16, null=8), tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "similarity_pairs.csv")))
    fields = ("low", "high", "null_low", "null_high")
    by_pair = {(r["step_a"], r["layer_a"], r["step_b"], r["layer_b"]): r for r in rows}
    shown = by_pair[("0", "block1", "12", "block1")]  # a figure's pair
    for name in ("linear_cka", "svcca"):
        low, high, null_low, null_high = (float(shown[f"{name}_{f}"]) for f in fields)
        assert low <= high and null_low <= null_high
    # Block1 barely moves in 12 steps: far above what unrelated representations score.
    assert float(shown["linear_cka"]) > float(shown["linear_cka_null_high"])
    assert float(shown["linear_cka_null_high"]) < 0.9
    hidden = by_pair[("0", "block1", "8", "block2")]  # no figure shows it: no replicates
    assert all(hidden[f"linear_cka_{f}"] == "" for f in fields) and hidden["linear_cka"]
    itself = by_pair[("0", "block1", "0", "block1")]  # 1 exactly: nothing to resample
    assert itself["linear_cka_low"] == "" and itself["warning"] == ""
    # block4 is 64 wide (the smoke model): SVCCA of 48 examples is flagged, naming both numbers.
    warned = by_pair[("0", "block4", "12", "block4")]["warning"]
    assert "SVCCA on 48 examples of 64 features" in warned
    assert any("SVCCA on 48 examples of 64 features" in r.message for r in caplog.records)
    to_init = list(csv.DictReader(open(tmp_path / "to_init.csv")))
    last = [r for r in to_init if r["step"] == "12" and r["layer"] == "block2"][0]
    assert float(last["linear_cka_to_first_low"]) <= float(last["linear_cka_to_first_high"])
    assert float(last["svcca_to_first_null_low"]) <= float(last["svcca_to_first_null_high"])
    data = np.load(tmp_path / "similarity.npz")
    assert data["linear_cka_null_high"][0, 0, 2, 0] == pytest.approx(
        float(shown["linear_cka_null_high"]), abs=1e-6)
    assert result["linear_cka"].shape == (3, 5, 3, 5)


def test_similarity_job_without_replicates_and_bad_counts(run_dir, tmp_path):
    run_similarity_job(sweep_config(run_dir, bootstrap=0, null=0, svcca=False), tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "similarity_pairs.csv")))
    assert rows and all(r["linear_cka_low"] == "" and r["linear_cka_null_high"] == ""
                        for r in rows)
    with pytest.raises(ConfigError, match="similarity.bootstrap=-1"):
        run_similarity_job(sweep_config(run_dir, bootstrap=-1), tmp_path)
    with pytest.raises(ConfigError, match="similarity.interval='bca'"):
        run_similarity_job(sweep_config(run_dir, interval="bca"), tmp_path)


def test_similarity_job_basic_interval_reflects_the_same_replicates(run_dir, tmp_path):
    """``similarity.interval=basic`` turns the same bootstrap replicates into ``2 v - q``:
    where SVCCA's replicates sit above the value (48 examples, 64 features), the basic
    interval is the percentile one mirrored about the value."""
    def pair(interval):
        out = tmp_path / interval
        run_similarity_job(sweep_config(run_dir, bootstrap=16, null=0, interval=interval),
                           out)
        rows = csv.DictReader(open(out / "similarity_pairs.csv"))
        return {(r["step_a"], r["layer_a"], r["step_b"], r["layer_b"]): r
                for r in rows}[("0", "block4", "12", "block4")]

    pct, basic = pair("percentile"), pair("basic")
    value = float(pct["svcca"])
    assert float(basic["svcca"]) == value
    np.testing.assert_allclose(float(basic["svcca_low"]), 2 * value - float(pct["svcca_high"]),
                               atol=1e-9)
    np.testing.assert_allclose(float(basic["svcca_high"]), 2 * value - float(pct["svcca_low"]),
                               atol=1e-9)
    assert float(pct["svcca_bias"]) > 0  # the replicates of a biased estimator sit above it
    assert float(basic["svcca_low"]) < value - float(pct["svcca_bias"]) < float(
        basic["svcca_high"])
