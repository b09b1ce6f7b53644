"""Sweeps through submitit (``sweep.executor``): each group of runs a job, requeued when it
is preempted, one report once every job has ended, a crashed job reported with its log,
and a re-run that resubmits only what did not finish. Jobs run for real through submitit's
``LocalExecutor`` (child processes of this machine); Slurm's own path is checked as far as
the sbatch file it would submit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_args, cli_env, run_cli, smoke_config
from transfusion_jax.config import ConfigError
from transfusion_jax.experiments.grid import read_status
from transfusion_jax.experiments.sweep import run_sweep
from transfusion_jax.runs import read_metrics

submitit = pytest.importorskip("submitit")

# Two batch sizes cannot train together: two groups, so two jobs.
SWEEP_CONFIG = '''
from configs.quickstart import get_config as quickstart


def get_config(arg=None):
    c = quickstart("smoke")
    c.job = "sweep"
    c.sweep.axes.batch = {"b16": {"train": {"batch_size": 16}},
                          "b32": {"train": {"batch_size": 32}}}
    c.sweep.seeds = SEEDS
    c.sweep.similarity = False
    c.sweep.executor = "local"
    c.sweep.slurm.time = 30
    if arg == "stage":  # one group reads the stage, the other does not
        from configs.recipe_transfusion import get_config as recipe
        from transfusion_jax.experiments.grid import init_variants

        c = recipe("smoke")
        c.sweep.seeds, c.sweep.similarity, c.sweep.executor = SEEDS, False, "local"
        c.sweep.slurm.time = 30
        c.sweep.axes.init = {"scratch_b32": {"init": {"name": "random"},
                                             "train": {"batch_size": 32}},
                             **init_variants(["pretrained"])}
    if arg == "long":  # time to preempt a job between two checkpoints
        c.train.steps = STEPS
        c.checkpoint.every_steps, c.checkpoint.keep_every = 20, 0
        c.eval.every_steps = STEPS // 2
        for name in c.evals:
            c.evals[name].every_steps = STEPS // 2
    return c
'''


def _config_file(tmp_path: Path, seeds: tuple[int, ...], steps: int = 120) -> str:
    path = tmp_path / "sweep_config.py"
    path.write_text(SWEEP_CONFIG.replace("SEEDS", repr(seeds)).replace("STEPS", str(steps)))
    return str(path)


def _statuses(sweep_dir: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"]
            for p in (sweep_dir / "runs").glob("*/sweep_run.json")}


def _wait_for(condition, what: str, timeout: float = 300):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _job_training(sweep_dir: Path, run: str) -> str | None:
    """The id of the local job whose log says it trains ``run`` (its controller's pid)."""
    for log in (sweep_dir / "jobs").glob("*_0_log.err"):
        if f"sweep job: {run} " in log.read_text():
            return log.name.split("_")[0]
    return None


def _task_pid(job_id: str) -> int:
    """The job's task: the process submitit's local controller (pid = job id) started."""
    children = Path(f"/proc/{job_id}/task/{job_id}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _checkpoints(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


@contextlib.contextmanager
def _cli_in_background(workdir: Path, data_dir: str, config: str, *overrides: str):
    """The sweep command started in the background (output in ``WORKDIR.log`` beside it);
    after the block, waits for it to end (killed if the block failed)."""
    with open(workdir.parent / f"{workdir.name}.log", "w") as out:
        proc = subprocess.Popen(cli_args(workdir, data_dir, *overrides, config=config),
                                cwd=ROOT, env=cli_env(1), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            yield proc
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_unknown_executor_is_one_error_line(data_dir, tmp_path):
    proc = run_cli(tmp_path / "sweep", data_dir, "--config.sweep.executor=slrum",
                   config="configs/recipe_transfusion.py:smoke")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: sweep.executor='slrum' is not valid (did you mean 'slurm'?); choose one of: "
        "inline, local, slurm")
    assert not (tmp_path / "sweep").exists()  # refused before anything was written


def test_hand_split_shards_are_refused_with_a_scheduler(tmp_path):
    config = smoke_config("unused")
    config.job = "sweep"
    config.sweep.executor, config.sweep.num_shards = "local", 2
    with pytest.raises(ConfigError, match="leave sweep.num_shards at 1"):
        run_sweep(config, tmp_path)


def test_slurm_options_become_the_sbatch_flags(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    from transfusion_jax.experiments.scheduler import make_executor, slurm_parameters

    config = smoke_config("unused")
    s = config.sweep.slurm
    s.partition, s.time, s.gpus_per_node, s.mem, s.account = "gpu", 90, 4, "64G", "lab"
    s.additional.qos = "high"
    text = _make_sbatch_string(command="python -m x", folder=tmp_path,
                               **slurm_parameters(config))
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=4", "--cpus-per-task=8",
                 "--mem=64G", "--account=lab", "--qos=high", "--nodes=1",
                 "--ntasks-per-node=1", "--signal=USR2@90"):
        assert f"#SBATCH {line}" in text.splitlines(), (line, text)
    config.sweep.executor = "slurm"
    if subprocess.run(["which", "srun"], capture_output=True).returncode != 0:
        with pytest.raises(ConfigError, match="needs Slurm on this machine"):
            make_executor(config, tmp_path)
    config.sweep.slurm.time = 0
    with pytest.raises(ConfigError, match="sweep.slurm.time=0"):
        make_executor(config, tmp_path)
    config.sweep.slurm.time, config.sweep.executor = 10, "local"
    with pytest.raises(ConfigError, match="cannot write to a bucket"):  # job files need a disk
        make_executor(config, "gs://bucket/sweep/jobs")


def test_two_groups_run_as_two_local_jobs_then_one_report(data_dir, tmp_path):
    """Two one-run groups, two jobs of submitit's LocalExecutor; the report once both have
    ended; the same command again submits nothing (both finished) and reports again."""
    sweep_dir = tmp_path / "sweep"
    config = _config_file(tmp_path, seeds=(0,))
    proc = run_cli(sweep_dir, data_dir, config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _statuses(sweep_dir) == {"batch=b16,seed=0": "finished",
                                    "batch=b32,seed=0": "finished"}
    submitted = [line for line in proc.stderr.splitlines() if "submitted (batch=" in line]
    assert len(submitted) == 2 and len(list((sweep_dir / "jobs").glob("*_result.pkl"))) == 2
    assert proc.stderr.count("sweep report in") == 1 and (sweep_dir / "report.html").exists()
    assert "| b16 |" in (sweep_dir / "report.md").read_text()

    again = run_cli(sweep_dir, data_dir, config=config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to train as 0 job(s)" in again.stderr and "submitted" not in again.stderr


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_its_runs(data_dir, tmp_path):
    """Two vectorised groups (2 seeds each) as two local jobs; the first job is sent the
    preemption signal (USR2, as Slurm and submitit's local controller send it before a job
    is stopped) between two checkpoints: submitit requeues it, its runs resume from their
    newest checkpoint, and the sweep ends with every run finished and one report."""
    sweep_dir = tmp_path / "sweep"
    steps = 120
    config = _config_file(tmp_path, seeds=(0, 1), steps=steps) + ":long"
    with _cli_in_background(sweep_dir, data_dir, config) as proc:
        victim = sweep_dir / "runs" / "batch=b16,seed=0"
        cut = _wait_for(lambda: [s for s in _checkpoints(victim) if s > 0],
                        "the first checkpoint after step 0")[0]
        job = _job_training(sweep_dir, "batch=b16,seed=0")
        assert job is not None
        os.kill(_task_pid(job), signal.SIGUSR2)
    stderr = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    log = (sweep_dir / "jobs" / f"{job}_0_log.err").read_text()
    assert "preempted or out of time; requeued: batch=b16,seed=0, batch=b16,seed=1" in log
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines()
               if "sweep job: batch=b16,seed=0 resumes from step" in line]
    assert resumed and resumed[0] >= cut and resumed[0] < steps, log[-3000:]
    assert set(_statuses(sweep_dir).values()) == {"finished"} and len(_statuses(sweep_dir)) == 4
    for run in ("batch=b16,seed=0", "batch=b16,seed=1"):
        evals = [r["step"] for r in read_metrics(sweep_dir / "runs" / run)
                 if r["split"] == "eval"]
        assert evals == sorted(set(evals)) and evals[-1] == steps, evals
    assert stderr.count("sweep report in") == 1 and (sweep_dir / "report.html").exists()


@pytest.mark.slow
def test_a_crashed_job_is_reported_and_a_rerun_resubmits_it(data_dir, tmp_path):
    """A job killed outright (no requeue) is reported: its run failed in the report, one
    ``error:`` line naming its log, exit status 1. The same command again trains only that
    run, in a new job, and reports with every run finished."""
    sweep_dir = tmp_path / "sweep"
    config = _config_file(tmp_path, seeds=(0,))
    with _cli_in_background(sweep_dir, data_dir, config) as proc:
        job = _wait_for(lambda: _job_training(sweep_dir, "batch=b32,seed=0"),
                        "the job of batch=b32")
        os.kill(_task_pid(job), signal.SIGKILL)
    stderr = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 1, stderr[-3000:]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: sweep: job {job} (batch=b32,seed=0) crashed; its log: "
                            f"{sweep_dir / 'jobs' / f'{job}_0_log.err'}"), error
    assert read_status(sweep_dir / "runs" / "batch=b32,seed=0")["status"] == "failed"
    assert read_status(sweep_dir / "runs" / "batch=b16,seed=0")["status"] == "finished"
    assert "| failed |" in (sweep_dir / "report.md").read_text()
    summary = (sweep_dir / "runs" / "batch=b16,seed=0" / "summary.json").stat().st_mtime

    again = run_cli(sweep_dir, data_dir, config=config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 to train as 1 job(s)" in again.stderr
    assert _statuses(sweep_dir) == {"batch=b16,seed=0": "finished",
                                    "batch=b32,seed=0": "finished"}
    assert (sweep_dir / "runs" / "batch=b16,seed=0" / "summary.json").stat().st_mtime \
        == summary  # the finished run was skipped
    assert "| failed |" not in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_runs_that_read_a_stage_are_submitted_once_it_has_finished(data_dir, tmp_path):
    """The stage is one job; the group that reads no stage is submitted at once, the group
    that starts from the stage's weights only after the stage's job has ended."""
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(sweep_dir, data_dir, config=_config_file(tmp_path, seeds=(0,)) + ":stage")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    stage_ended = first("ended (stages)")
    assert first("submitted (init=scratch_b32,seed=0)") < first("submitted (stages)")
    assert first("submitted (init=pretrained,seed=0)") > stage_ended
    assert read_status(sweep_dir / "stages" / "source")["status"] == "finished"
    assert _statuses(sweep_dir) == {"init=scratch_b32,seed=0": "finished",
                                    "init=pretrained,seed=0": "finished"}
    assert proc.stderr.count("sweep report in") == 1
