"""Evaluators in the training loop (the live values equal the after-the-fact analyses), and
the Python API that starts a run and returns it opened."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import transfusion_jax
from tests.conftest import run_cli, smoke_config
from transfusion_jax.analysis.similarity_job import run_similarity_job
from transfusion_jax.analysis.weight_change import layer_changes
from transfusion_jax.api import make_config
from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.runs import Run, read_metrics
from transfusion_jax.train.evaluators import validate_evals
from transfusion_jax.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """The smoke quickstart (checkpoints 0, 8, 12), evaluators every 4 steps on 40 examples."""
    workdir = tmp_path_factory.mktemp("evals")
    config = smoke_config(data_dir)
    config.evals.similarity_to_init.update(every_steps=4, examples=40, svcca=True)
    config.evals.weight_change.every_steps = 4
    run = transfusion_jax.train(config, workdir)  # the Python API: the package is callable
    assert isinstance(run, Run) and run.workdir == workdir.absolute()
    return run


def _logged(run: Run, name: str, step: int) -> dict[str, float]:
    m = run.metrics[name]
    index = int(np.flatnonzero(m["step"] == step)[0])
    return {k: float(v[index]) for k, v in m.items() if "/" in k}


@pytest.mark.parametrize("step", [8, 12])
def test_live_similarity_to_init_equals_the_similarity_job(run, step, tmp_path):
    config = load_config("configs/similarity_sweep.py")
    s = config.similarity
    s.run_dir, s.steps, s.max_examples, s.batch_size = str(run.workdir), (0, step), 40, 16
    after = run_similarity_job(config, tmp_path)
    live = _logged(run, "similarity_to_init", step)
    layers = after["layers"]
    assert [k.partition("/")[2] for k in live if k.startswith("linear_cka/")] == layers
    for li, layer in enumerate(layers):
        assert live[f"linear_cka/{layer}"] == pytest.approx(
            after["linear_cka"][0, li, 1, li], abs=1e-5), layer
        assert live[f"svcca/{layer}"] == pytest.approx(after["svcca"][0, li, 1, li],
                                                       abs=1e-4), layer
    assert min(live[f"linear_cka/{x}"] for x in layers) < 0.999  # the run did move


@pytest.mark.parametrize("step", [8, 12])
def test_live_weight_change_equals_the_weight_change_analysis(run, step):
    before, now = run.read_variables(0)["params"], run.read_variables(step)["params"]
    result = layer_changes(before, now, blocks=run.block_names())
    live = _logged(run, "weight_change", step)
    for block in run.block_names():
        layers = [c for c in result.layers if c.path.split("/")[0] == block]
        change = np.sqrt(sum(c.norm_change ** 2 for c in layers))
        norm = np.sqrt(sum(c.norm_before ** 2 for c in layers))
        corr = np.concatenate([c.filter_correlation for c in layers])
        assert live[f"relative/{block}"] == pytest.approx(change / norm, rel=1e-5)
        assert live[f"filter_corr_mean/{block}"] == pytest.approx(corr.mean(), abs=1e-5)
        assert live[f"filter_corr_min/{block}"] == pytest.approx(corr.min(), abs=1e-5)


def test_values_reach_the_summary_and_the_curves(run):
    summary = run.summary
    assert set(summary["final_evals"]) == {"similarity_to_init", "weight_change"}
    assert summary["final_evals"]["weight_change"] == _logged(run, "weight_change", 12)
    md = (run.workdir / "summary.md").read_text()
    assert "| similarity_to_init at the last step |" in md
    assert os.path.getsize(run.workdir / "curves.png") > 20_000


def test_the_returned_run_holds_the_metrics_and_the_checkpoints(run):
    records = read_metrics(run.workdir)
    evals = [r for r in records if r["split"] == "eval"]
    np.testing.assert_array_equal(run.metrics["eval"]["step"], [r["step"] for r in evals])
    np.testing.assert_array_equal(run.metrics["eval"]["accuracy"],
                                  [r["accuracy"] for r in evals])
    assert run.steps == [0, 8, 12] and run.finished and run.num_classes == 10
    assert run.summary["final_eval"]["accuracy"] == evals[-1]["accuracy"]
    variables = run.read_variables(12)
    assert set(variables) == {"params", "batch_stats"}
    logits, _ = run.model.apply(variables, np.zeros(run.input_shape, np.float32))
    assert logits.shape == (1, 10)


def test_python_api_errors_are_the_command_line_errors():
    with pytest.raises(ConfigError, match="unknown config key 'train.stpes'"):
        make_config("configs/quickstart.py:smoke", {"train.stpes": 3})
    with pytest.raises(ConfigError, match="config file configs/nope.py does not exist"):
        make_config("configs/nope.py")


def test_a_resumed_run_compares_with_its_own_step_0(data_dir, run, tmp_path):
    """Cut off after step 8 and resumed: the reference is read back from checkpoint 0, and the
    values at step 12 equal the uninterrupted run's."""
    shutil.copytree(run.workdir, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "12")
    config = smoke_config(data_dir)
    config.evals.similarity_to_init.update(every_steps=4, examples=40, svcca=True)
    config.evals.weight_change.every_steps = 4
    train_and_evaluate(config, tmp_path)
    again = Run.open(tmp_path)
    for name in ("similarity_to_init", "weight_change"):
        np.testing.assert_allclose(list(_logged(again, name, 12).values()),
                                   list(_logged(run, name, 12).values()), rtol=1e-5)


@pytest.mark.parametrize("evals,expected", [
    ({"x": {"type": "similarity"}}, "evals.x.type='similarity' is not valid (did you mean "
                                    "'similarity_to_init'?); choose one of: classification, "
                                    "similarity_to_init, weight_change"),
    ({"x": {"type": "weight_change", "every_step": 5}},
     "evals.x: unknown option 'every_step' (did you mean 'every_steps'?) for type "
     "'weight_change'; its options are: every_steps"),
    ({"x": {"every_steps": 5}}, "evals.x has no 'type'"),
    ({"eval": {"type": "classification"}}, "evals.eval is the main evaluation"),
    ({"x": {"type": "weight_change", "every_steps": 0}}, "evals.x.every_steps=0 must be"),
])
def test_bad_evaluators_name_the_fix(evals, expected):
    config = smoke_config("")
    config.evals = evals
    with pytest.raises(ConfigError) as e:
        validate_evals(config, 1)
    assert expected in str(e.value)


def test_bad_evaluator_on_the_command_line(data_dir, tmp_path):
    workdir = tmp_path / "run"
    proc = run_cli(workdir, data_dir, "--config.evals.weight_change.type=weight_chnage",
                   timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert "evals.weight_change.type='weight_chnage' is not valid (did you mean " \
           "'weight_change'?)" in errors[0]
    assert not (workdir / "checkpoints").exists()


def test_every_option_of_a_configured_evaluator_is_settable_by_flag(data_dir, tmp_path):
    from transfusion_jax.cli_flags import parse_command_line

    config, _ = parse_command_line([
        "prog", "--config=configs/quickstart.py:smoke", f"--workdir={tmp_path / 'run'}",
        "--config.evals.similarity_to_init.svcca=True",
        "--config.evals.similarity_to_init.layers=('block1', 'block2')",
        "--config.evals.similarity_to_init.debiased=True"])
    entry = config.evals.similarity_to_init
    assert entry.svcca is True and entry.debiased is True
    assert tuple(entry.layers) == ("block1", "block2")
    assert entry.examples == 32  # the smoke variant's own value is kept
    from transfusion_jax.train.evaluators import evaluator
    with pytest.raises(ConfigError, match="its options are: .*svcca"):
        evaluator("similarity_to_init", svcc=True)
