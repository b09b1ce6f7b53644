"""The sweep job: grid expansion, stages, skipping finished runs, resuming cut-off ones,
failed runs recorded, and the report written over a real (tiny) transfer study."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import run_cli
from transfusion_jax.config import ConfigError, load_config
from transfusion_jax.experiments.grid import expand_grid, read_status, run_dir
from transfusion_jax.experiments.sweep import run_sweep
from transfusion_jax.runs import read_metrics

SMOKE = "configs/recipe_transfusion.py:smoke"


def smoke_sweep(data_dir: str):
    config = load_config(SMOKE)
    config.data.data_dir = data_dir
    config.log.tensorboard = False
    return config


def test_grid_is_axes_times_seeds_with_stage_references(tmp_path):
    config = load_config(SMOKE)
    runs = expand_grid(config, tmp_path)
    assert [r.name for r in runs[:3]] == ["init=mean_var,seed=0", "init=pretrained,seed=0",
                                          "init=random,seed=0"]
    assert len(runs) == 6 and {r.seed for r in runs} == {0, 1}
    by_name = {r.name: r.config for r in runs}
    assert by_name["init=pretrained,seed=1"].init.source == str(tmp_path / "stages/source")
    assert by_name["init=pretrained,seed=1"].init.options.dont_load == ("^head/",)
    assert by_name["init=random,seed=0"].init.source == ""
    assert all(r.config.job == "train" and r.config.seed == r.seed for r in runs)


def test_grid_errors_name_the_variant(tmp_path):
    config = load_config(SMOKE)
    config.sweep.axes.init.random = {"init": {"nmae": "random"}}
    with pytest.raises(ConfigError, match=r"sweep.axes.init.random.init.nmae"):
        expand_grid(config, tmp_path)
    config = load_config(SMOKE)
    config.sweep.axes.init.pretrained.init.source = "@teacher"
    with pytest.raises(ConfigError, match=r"'@teacher' names no earlier stage; stages: "
                                          r"\['source'\]"):
        expand_grid(config, tmp_path)
    config = load_config(SMOKE)
    config.sweep.shard_index = 2
    config.sweep.num_shards = 2
    with pytest.raises(ConfigError, match="shard_index=2"):
        run_sweep(config, tmp_path)


@pytest.fixture(scope="module")
def finished_sweep(data_dir, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    config = smoke_sweep(data_dir)
    result = run_sweep(config, sweep_dir)
    return config, sweep_dir, result


def test_sweep_trains_every_run_from_the_stage_and_reports(finished_sweep):
    config, sweep_dir, result = finished_sweep
    assert set(result["runs"].values()) == {"finished"} and len(result["runs"]) == 6
    assert read_status(sweep_dir / "stages/source")["status"] == "finished"
    for name in ("report_html", "report_md", "to_init_png", "between_png", "filters_png",
                 "dynamics_png"):
        assert result["report"][name], name
    html = (sweep_dir / "report.html").read_text()
    assert "Convergence speed" in html and "NaN" not in html
    to_init = (sweep_dir / "similarity/to_init.csv").read_text().splitlines()
    assert len(to_init) == 1 + 6 * 5  # runs x (4 blocks + pre_logits)
    # Every value with its bootstrap interval and null band (issue 15).
    assert {"linear_cka_low", "linear_cka_null_high", "svcca_null_low",
            "warning"} <= set(to_init[0].split(","))
    between = list(csv.DictReader(open(sweep_dir / "similarity/between.csv")))
    filled = [r for r in between if r["linear_cka"]]
    assert filled and all(float(r["linear_cka_null_low"]) <= float(r["linear_cka_null_high"])
                          and float(r["linear_cka_low"]) <= float(r["linear_cka_high"])
                          for r in filled)
    # The learning dynamics the runs logged live: 3 inits x 5 layers x 3 evaluations of
    # similarity to init, 3 inits x 5 blocks (head included) x 3 of weight change.
    dynamics = (sweep_dir / "dynamics/dynamics.csv").read_text().splitlines()
    assert len(dynamics) == 1 + 3 * 5 * 3 * 2 and "Learning dynamics" in html


def test_pretrained_run_starts_from_the_stage_weights(finished_sweep):
    from transfusion_jax.runs import Run

    _, sweep_dir, _ = finished_sweep
    source = Run.open(sweep_dir / "stages/source").read_variables(8)["params"]
    run = Run.open(sweep_dir / "runs/init=pretrained,seed=0").read_variables(0)["params"]
    np.testing.assert_array_equal(run["block2"]["conv"]["kernel"],
                                  source["block2"]["conv"]["kernel"])
    assert not np.array_equal(run["head"]["kernel"], source["head"]["kernel"])  # dont_load


def test_rerun_skips_finished_and_resumes_a_cut_off_run(finished_sweep, tmp_path):
    config, sweep_dir, _ = finished_sweep
    runs = expand_grid(config, sweep_dir)
    victim = run_dir(sweep_dir, runs[1])
    before = [r for r in read_metrics(victim) if r["split"] == "eval"]
    # Cut the run off after its step-6 checkpoint, as a killed process would leave it.
    copy = tmp_path / "victim"
    shutil.copytree(victim, copy)
    shutil.rmtree(victim / "checkpoints/12")
    (victim / "summary.json").unlink()
    status = json.loads((victim / "sweep_run.json").read_text())
    (victim / "sweep_run.json").write_text(json.dumps({**status, "status": "running"}))
    untouched = run_dir(sweep_dir, runs[0]) / "summary.json"
    mtime = os.path.getmtime(untouched)

    result = run_sweep(config, sweep_dir)

    assert os.path.getmtime(untouched) == mtime  # finished runs are skipped, not re-evaluated
    assert result["runs"][runs[1].name] == "finished"
    after = [r for r in read_metrics(victim) if r["split"] == "eval"]
    assert [r["step"] for r in after] == [r["step"] for r in before]
    np.testing.assert_allclose([r["accuracy"] for r in after],
                               [r["accuracy"] for r in before], rtol=1e-6)


def test_a_nan_run_is_recorded_failed_and_the_sweep_goes_on(data_dir, tmp_path):
    config = smoke_sweep(data_dir)
    config.sweep.seeds = (0,)
    config.sweep.similarity = False
    config.sweep.axes.init.random = {"init": {"name": "random"},
                                     "train": {"schedule": {"base_lr": 1e12}}}
    result = run_sweep(config, tmp_path)
    assert result["runs"]["init=random,seed=0"] == "failed"
    failed = read_status(tmp_path / "runs/init=random,seed=0")
    assert "training loss became" in failed["error"]
    assert read_status(tmp_path / "runs/init=mean_var,seed=0")["status"] == "finished"
    assert "| failed |" in (tmp_path / "report.md").read_text()


def test_sweep_cli_smoke_exits_zero(data_dir, tmp_path):
    proc = run_cli(tmp_path, data_dir, "--config.sweep.seeds=(0,)",
                   "--config.sweep.similarity=False", config=SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "report.html").exists()


@pytest.mark.slow  # run with -m slow; a minute on 2 cores
def test_two_shards_split_the_runs_and_one_report_is_written(data_dir, tmp_path):
    """launch/sweep.sh with two local shards: shard 1 waits for the stage shard 0 trains,
    each trains its own runs, and the last one to finish writes the report."""
    import subprocess
    import sys

    from tests.conftest import ROOT, cli_env

    proc = subprocess.run(
        ["bash", "launch/sweep.sh", SMOKE, str(tmp_path), f"--config.data.data_dir={data_dir}",
         "--config.log.tensorboard=False", "--config.sweep.seeds=(0,)",
         "--config.sweep.similarity=False"],
        cwd=ROOT, env=cli_env(1, GPUS="2", PYTHON=sys.executable), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = {p.parent.name: json.loads(p.read_text())["status"]
                for p in (tmp_path / "runs").glob("*/sweep_run.json")}
    assert statuses == {"init=mean_var,seed=0": "finished", "init=pretrained,seed=0": "finished",
                        "init=random,seed=0": "finished"}
    assert "shard is done" in proc.stderr  # the first shard to finish left the report
    assert (tmp_path / "report.html").exists()
