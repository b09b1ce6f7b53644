"""Sweeps on a scheduler: each group of runs one submitit job (``sweep.executor``).

With ``sweep.executor = "local"`` (submitit's ``LocalExecutor``: a process on this machine,
every job at once) or ``"slurm"`` (submitit's ``SlurmExecutor``, options ``sweep.slurm``),
`run_sweep_jobs` replaces the in-process loop of `sweep.run_sweep`:

1. The runs are planned as ``inline`` plans them (`sweep.plan_runs`): finished runs are
   skipped, the others grouped where they can train together (one group per job), a run
   that shares its settings with no other is a job of its own. Runs are grouped unless
   ``sweep.vectorize`` is False; under ``"auto"`` each job decides on its own backend
   whether its group trains together (GPU/TPU) or one run after another (CPU), since the
   submitting machine (a login node, say) need not have the jobs' accelerators.
2. Unfinished stages (``sweep.stages``) are one job that trains them in order. Groups that
   read no stage are submitted at once; the others once that job has finished.
3. A job (`SweepJob`) trains its runs with the ``inline`` code (`sweep.train_runs`, or
   `sweep.train_stages`): statuses, resuming and skipping are unchanged. It is a
   `submitit.helpers.Checkpointable`: on preemption or timeout submitit calls its
   ``checkpoint()``, which resubmits the same job; the requeued job resumes each run from
   its newest Orbax checkpoint.
4. Once every job has ended, the submitting process writes the report once
   (`sweep.finish_sweep`). The runs of a job that crashed are recorded failed (the report
   lists them) and the command then stops with one ``error:`` line naming the job's log.

Re-running the command reconciles with what finished: finished runs are skipped, the
others are submitted again. Job files and logs: ``SWEEP/jobs/<job id>_*``.

Within one host, a group is one JAX program over all of the job's devices (the run axis
sharded); a job never spans several hosts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ml_collections
import submitit

from transfusion_jax.config import ConfigError, check_positive, to_dict
from transfusion_jax.experiments import sweep
from transfusion_jax.experiments.grid import GridRun, expand_grid, read_status, run_dir
from transfusion_jax.paths import is_remote, to_path

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
POLL_S = {"local": 1.0, "slurm": 30.0}  # how often the submitting process checks its jobs


class JobFailedError(ConfigError):
    """A submitted job crashed (its message names the job's log); its runs are failed."""


class SweepJob(submitit.helpers.Checkpointable):
    """One submitted job: the sweep's stages (``runs=None``) or a group of its runs.

    The job holds only the sweep's config, its folder and run names: its state is in the
    runs' own workdirs (status files, Orbax checkpoints), so a requeued copy resumes them.
    """

    def __init__(self, config: ml_collections.ConfigDict, sweep_dir: str,
                 runs: tuple[str, ...] | None) -> None:
        self.config = config
        self.sweep_dir = str(sweep_dir)
        self.runs = runs

    def describe(self) -> str:
        """``"stages"``, or the job's run names."""
        return "stages" if self.runs is None else ", ".join(self.runs)

    def __call__(self) -> dict[str, str]:
        """Trains the job's runs (skips finished ones, resumes cut-off ones).

        Returns:
          ``{run name: "finished" | "failed"}`` (``{"stages": "finished"}`` for stages).
        """
        from transfusion_jax.api import setup_jax, setup_logging
        from transfusion_jax.train.resume import check_resume

        setup_logging()
        setup_jax()
        sweep_dir = to_path(self.sweep_dir)
        if self.runs is None:
            sweep.train_stages(self.config, sweep_dir)
            return {"stages": "finished"}
        runs = [r for r in expand_grid(self.config, sweep_dir) if r.name in self.runs]
        for r in runs:
            if read_status(run_dir(sweep_dir, r)).get("status") != "finished":
                step = check_resume(r.config, run_dir(sweep_dir, r))
                log.info("sweep job: %s %s", r.name,
                         "starts" if step is None else f"resumes from step {step}")
        return sweep.train_runs(self.config, runs, sweep_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or timeout: the same job, resubmitted. Nothing
        is saved here: the requeued job resumes each run from its newest checkpoint."""
        log.warning("sweep job: preempted or out of time; requeued: %s", self.describe())
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _check_options(config: ml_collections.ConfigDict) -> None:
    s = config.sweep.slurm
    check_positive("sweep.slurm.time", s.time)
    check_positive("sweep.slurm.gpus_per_node", s.gpus_per_node, allow_zero=True)
    check_positive("sweep.slurm.cpus_per_task", s.cpus_per_task)


def slurm_parameters(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``sweep.slurm`` as submitit's ``SlurmExecutor`` parameters (one task on one node)."""
    s = config.sweep.slurm
    params: dict[str, Any] = {"time": int(s.time), "nodes": 1, "ntasks_per_node": 1,
                              "gpus_per_node": int(s.gpus_per_node),
                              "cpus_per_task": int(s.cpus_per_task)}
    for key in ("partition", "mem", "account"):
        if s[key]:
            params[key] = s[key]
    if s.additional:
        params["additional_parameters"] = s.additional.to_dict()
    return params


def make_executor(config: ml_collections.ConfigDict, folder: Path) -> submitit.Executor:
    """The submitit executor of ``sweep.executor``, its files and logs in ``folder``.

    Raises:
      ConfigError: ``slurm`` where no Slurm is installed, or a bad ``sweep.slurm`` value.
    """
    _check_options(config)
    s = config.sweep
    if is_remote(folder):
        raise ConfigError(
            f"sweep.executor={s.executor} keeps its job files in {folder}, which submitit "
            "cannot write to a bucket: use a sweep folder on a filesystem the nodes share "
            "(sweep.executor=inline accepts gs://)")
    if s.executor == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=float(s.slurm.time),
                                   gpus_per_node=int(s.slurm.gpus_per_node))
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as e:
        raise ConfigError(f"sweep.executor='slurm' needs Slurm on this machine ({e}); "
                          "submit from the cluster's login node, or use "
                          "sweep.executor=local to run the same jobs here") from e
    try:
        executor.update_parameters(**slurm_parameters(config))
    except ValueError as e:
        raise ConfigError(f"sweep.slurm: {' '.join(str(e).split())}") from e
    return executor


def _reads_stage(run: GridRun, stage_dirs: list[str]) -> bool:
    """Whether ``run``'s config names a stage's workdir (an ``@NAME`` reference) outside
    its ``sweep`` section (which holds every variant of the grid)."""
    text = json.dumps({k: v for k, v in to_dict(run.config).items() if k != "sweep"})
    return any(json.dumps(d)[1:-1] in text for d in stage_dirs)


Jobs = dict[str, tuple[submitit.Job, SweepJob]]  # job id -> (job, what it trains)


def _submit(executor: submitit.Executor, config: ml_collections.ConfigDict,
            sweep_dir: Path, runs: tuple[str, ...] | None, jobs: Jobs) -> None:
    """Submits one `SweepJob` and adds it to ``jobs``."""
    job_fn = SweepJob(config, str(sweep_dir), runs)
    if isinstance(executor, submitit.SlurmExecutor):
        executor.update_parameters(job_name=f"tfj-sweep-{sweep_dir.name}")
    job = executor.submit(job_fn)
    log.info("sweep: job %s submitted (%s); log %s", job.job_id, job_fn.describe(),
             job.paths.stderr)
    jobs[job.job_id] = (job, job_fn)


def _wait(jobs: Jobs, poll_s: float) -> tuple[dict[str, str], dict[str, str]]:
    """Waits for every job of ``jobs`` to end.

    Returns:
      The runs' statuses the jobs returned, and ``{job id: error line}`` of crashed jobs.
    """
    statuses: dict[str, str] = {}
    crashed = {}
    for job in submitit.helpers.as_completed([job for job, _ in jobs.values()],
                                             poll_frequency=poll_s):
        job_fn = jobs[job.job_id][1]
        try:
            statuses.update(job.result())
            log.info("sweep: job %s ended (%s)", job.job_id, job_fn.describe())
        except (submitit.core.utils.FailedJobError,
                submitit.core.utils.UncompletedJobError) as e:
            last = [line for line in str(e).splitlines() if line.strip()]
            log.warning("sweep: job %s crashed (%s): %s", job.job_id, job_fn.describe(),
                        last[-1] if last else "no result")
            crashed[job.job_id] = (f"job {job.job_id} ({job_fn.describe()}) crashed; its "
                                   f"log: {job.paths.stderr}")
    return statuses, crashed


def _record_crashed(sweep_dir: Path, runs: list[GridRun], names: tuple[str, ...],
                    why: str) -> dict[str, str]:
    """Records the unfinished runs of a crashed job as failed (the report lists them)."""
    out = {}
    for r in runs:
        if r.name not in names:
            continue
        status = read_status(run_dir(sweep_dir, r))
        if status.get("status") in ("finished", "failed"):
            out[r.name] = status["status"]
            continue
        sweep.write_status(run_dir(sweep_dir, r), status="failed", error=why, name=r.name,
                           axes=r.axes, seed=r.seed, config=to_dict(r.config))
        out[r.name] = "failed"
    return out


def run_sweep_jobs(config: ml_collections.ConfigDict, sweep_dir: Path,
                   runs: list[GridRun]) -> dict[str, Any]:
    """Trains the sweep's unfinished runs as submitit jobs, then reports once.

    Returns:
      ``{"runs": {name: status}, "report": files, "jobs": {job id: log path}}``.

    Raises:
      JobFailedError: a job crashed (after the report, which lists its runs as failed; a
        crashed stage job stops the sweep before the runs that read a stage).
      ConfigError: a bad ``sweep.executor`` setup (see `make_executor`).
    """
    executor = make_executor(config, sweep_dir / JOBS_DIR)
    poll_s = POLL_S[config.sweep.executor]
    stage_dirs = [str(d) for _, _, d in sweep.stage_configs(config, sweep_dir)]
    stages_done = all(read_status(d).get("status") == "finished" for d in stage_dirs)
    groups = sweep.plan_runs(config, runs, sweep_dir,
                             group=config.sweep.vectorize is not False)
    later = [g for g in groups
             if not stages_done and any(_reads_stage(r, stage_dirs) for r in g)]
    log.info("sweep: %d runs in %s; %d to train as %d job(s)%s (sweep.executor=%s), logs in %s",
             len(runs), sweep_dir, sum(map(len, groups)), len(groups),
             "" if stages_done else ", after one job for the stages", config.sweep.executor,
             sweep_dir / JOBS_DIR)
    jobs: Jobs = {}
    for group in groups:
        if not any(group is g for g in later):  # reads no stage: submitted at once
            _submit(executor, config, sweep_dir, tuple(r.name for r in group), jobs)
    if not stages_done:
        stage_job: Jobs = {}
        _submit(executor, config, sweep_dir, None, stage_job)
        _, crashed = _wait(stage_job, poll_s)
        if crashed:
            _wait(jobs, poll_s)  # the jobs already submitted end first
            raise JobFailedError(f"sweep: the stage {next(iter(crashed.values()))}; the "
                                 f"{len(later)} job(s) of runs that read a stage were not "
                                 "submitted. Fix it and re-run the command")
    for group in later:
        _submit(executor, config, sweep_dir, tuple(r.name for r in group), jobs)
    done, crashed = _wait(jobs, poll_s)
    statuses = {r.name: "finished" for r in runs}  # finished before
    statuses.update(done)
    for job_id, line in crashed.items():
        statuses.update(_record_crashed(sweep_dir, runs, jobs[job_id][1].runs or (), line))
    result = sweep.finish_sweep(config, sweep_dir, runs, statuses)
    result["jobs"] = {job_id: str(job.paths.stderr) for job_id, (job, _) in jobs.items()}
    if crashed:
        first = next(iter(crashed.values()))
        more = f" (and {len(crashed) - 1} more job(s))" if len(crashed) > 1 else ""
        raise JobFailedError(f"sweep: {first}{more}; its runs are failed in the report. "
                             "Re-run the command to submit them again")
    return result
