"""Every recipe config expands into valid runs; the fine-tuning modes' learning-rate rules hit
exactly the parameters they name on the real model; the art recipe trains end to end (slow)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from transfusion_jax.config import load_config
from transfusion_jax.experiments.grid import expand_grid, stage_configs
from transfusion_jax.models import build_model
from transfusion_jax.train.optim import lr_factors
from transfusion_jax.train.setup import validate

RECIPES = ["recipe_transfusion.py:quick", "recipe_transfusion.py:digits",
           "recipe_transfusion.py", "recipe_transfusion.py:smoke", "recipe_art.py:double",
           "recipe_art.py:modes", "recipe_art.py:modes,smoke", "recipe_art.py:double,smoke",
           "recipe_art.py:rasta_modes", "recipe_art.py:iconart_double"]


@pytest.mark.parametrize("spec", RECIPES)
def test_recipe_expands_into_valid_runs(spec, tmp_path):
    config = load_config(f"configs/{spec}")
    runs = expand_grid(config, tmp_path)
    assert runs and len(runs) == len({r.name for r in runs})
    for run in runs:
        validate(run.config, 1)
    for _, stage, _ in stage_configs(config, tmp_path):
        validate(stage, 1)
    assert config.sweep.baseline in {r.axes["init"] for r in runs}


def test_fine_tuning_modes_scale_every_pretrained_layer_but_the_new_head(tmp_path):
    runs = {r.axes["init"]: r.config for r in
            expand_grid(load_config("configs/recipe_art.py:modes"), tmp_path) if r.seed == 0}
    model = build_model("efficientnet_lite0", 10)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 32, 32, 3))))["params"]
    flat = {"/".join(k.key for k in path): v for path, v in
            jax.tree_util.tree_flatten_with_path(
                lr_factors(params, runs["mode_a"].train.lr_multipliers))[0]}
    assert {k for k, v in flat.items() if v == 1.0} == {"head/kernel", "head/bias"}
    assert all(v == 0.1 for k, v in flat.items() if not k.startswith("head/"))
    frozen = jax.tree.leaves(lr_factors(params, (), runs["frozen"].train.freeze))
    assert sorted(set(frozen)) == [0.0, 1.0] and frozen.count(1.0) == 2


@pytest.mark.slow
def test_double_fine_tuning_recipe_runs_end_to_end(data_dir, tmp_path):
    from transfusion_jax.experiments.sweep import run_sweep

    config = load_config("configs/recipe_art.py:double,smoke")
    config.data.data_dir = data_dir
    config.sweep.similarity = False
    result = run_sweep(config, tmp_path)
    assert set(result["runs"].values()) == {"finished"}
    assert (tmp_path / "report.html").exists()
