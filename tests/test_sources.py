"""init.source is checked when read: runs must be finished (or name a step), weights finite."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from tests.conftest import smoke_config
from transfusion_jax.config import ConfigError
from transfusion_jax.train.loop import train_and_evaluate
from transfusion_jax.train.setup import build_run, initial_state
from transfusion_jax.weights import flatten, read_orbax_variables, save_npz


@pytest.fixture(scope="module")
def unfinished_run(finished_run, tmp_path_factory):
    """The smoke run as if killed after its step-0 checkpoint."""
    run = tmp_path_factory.mktemp("unfinished") / "run"
    shutil.copytree(finished_run, run)
    for step in ("8", "12"):
        shutil.rmtree(run / "checkpoints" / step)
    return run


def _pretrained(data_dir, source):
    return smoke_config(data_dir, **{"init.name": "pretrained", "init.source": str(source)})


def test_a_run_that_has_not_finished_is_refused_before_anything_is_written(
        data_dir, unfinished_run, tmp_path):
    with pytest.raises(ConfigError, match=r"is a run that has not finished: its newest "
                                          r"checkpoint is step 0 of 12.*@0"):
        train_and_evaluate(_pretrained(data_dir, unfinished_run), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_step_named_explicitly_is_loaded_exactly(data_dir, unfinished_run, finished_run):
    for source, step in ((f"{unfinished_run}@0", "0"), (f"{finished_run}@8", "8"),
                         (str(finished_run), "12")):
        config = _pretrained(data_dir, source)
        state = initial_state(config, build_run(config))
        expected = read_orbax_variables(finished_run / "checkpoints" / step)["params"]
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
            assert np.array_equal(np.asarray(a), b), source


def test_a_source_holding_nan_is_refused_naming_the_tensor(data_dir, finished_run, tmp_path):
    flat = {k: np.asarray(v) for k, v in
            flatten(read_orbax_variables(finished_run / "checkpoints" / "12")).items()}
    flat["params/block3/conv/kernel"] = flat["params/block3/conv/kernel"].copy()
    flat["params/block3/conv/kernel"][0, 0, 0, :2] = [np.nan, np.inf]
    save_npz(tmp_path / "w.npz", flat)
    with pytest.raises(ConfigError, match=r"holds NaN or infinite values in 1 tensor\(s\): "
                                          r"params/block3/conv/kernel"):
        train_and_evaluate(_pretrained(data_dir, tmp_path / "w.npz"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no "good" step 0 of NaN weights


def test_an_initialisation_that_is_not_finite_is_refused(data_dir):
    config = smoke_config(data_dir, **{"init.options.scheme": "truncated_normal"})
    config.init.options.stddev = float("nan")
    with pytest.raises(ConfigError, match=r"the 'random' initialisation holds NaN or infinite "
                                          r"values in \d+ tensor\(s\): params/block1/conv/kernel"):
        initial_state(config, build_run(config))
