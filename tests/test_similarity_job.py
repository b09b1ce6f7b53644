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
                   config="configs/similarity_sweep.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(tmp_path / "similarity.npz")
    assert data["linear_cka"].shape == (3, 5, 3, 5)
    assert np.isnan(data["linear_cka"][0, 0, 1, 1])  # only the figures' pairs
