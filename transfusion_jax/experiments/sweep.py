"""The sweep job: train every run of a grid, then aggregate and report.

``python -m transfusion_jax.main --config=configs/recipe_transfusion.py --workdir=SWEEP``

Layout of the sweep's workdir::

    SWEEP/stages/NAME/        a stage's training run (e.g. the source model)
    SWEEP/runs/RUN_NAME/      each run's training workdir, plus sweep_run.json
    SWEEP/aggregate/          statistics over seeds (tables, curves), see `aggregate`
    SWEEP/similarity/         per-layer CKA of each trained model to its init and the others
    SWEEP/filters/            first-layer filters per init
    SWEEP/report.html, report.md

Runs that differ only in seed, init and learning-rate schedule train together as one
compiled program (``sweep.vectorize``; `transfusion_jax.train.group`, groups from
`grouping`); a run that shares its settings with no other trains alone, with a log line saying
why. The default, ``"auto"``, groups runs on GPUs and TPUs; on a CPU, where the stacked step
is slower than a single run's, it trains the runs side by side, one per core, each the
single-run program on a CPU device of its own (`side_by_side`, ``sweep.cpu_side_by_side``;
README, "Runs trained together"). Re-running the command skips finished runs
(their ``sweep_run.json`` says so and their config is unchanged) and resumes runs that were
cut off from their last checkpoint. A run whose loss becomes NaN is recorded as failed and
the sweep goes on.

Where the runs train (``sweep.executor``, `EXECUTORS`): ``inline`` (default) trains them in
this process, one group after another, each group one JAX program over every device of the
host (the run axis sharded); ``local`` and ``slurm`` submit each group as a submitit job
(`transfusion_jax.experiments.scheduler`) and write the report once every job has ended.
With ``inline`` and ``sweep.num_shards = N``, process ``i`` (``sweep.shard_index``) trains
``runs[i::N]`` (``GPUS=N launch/sweep.sh``: one process per local GPU); stages are trained by
shard 0 and awaited by the others; the last shard to finish writes the report (or run
``job = aggregate`` on the sweep's workdir afterwards).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from transfusion_jax import parallel
from transfusion_jax.config import ConfigError, check_choice, check_positive, to_dict
from transfusion_jax.experiments.grid import (
    STATUS_FILE,
    GridRun,
    expand_grid,
    read_status,
    run_dir,
    stage_configs,
)
from transfusion_jax.experiments.grouping import plan_groups, why_alone
from transfusion_jax.experiments.side_by_side import train_side_by_side
from transfusion_jax.paths import to_path, write_text
from transfusion_jax.train.group.loop import PreparedGroup, prepare_group, train_group
from transfusion_jax.train.group.rules import differences, shared_settings
from transfusion_jax.train.group.step import UnvmappableModelError
from transfusion_jax.train.loop import NonFiniteLossError, train_and_evaluate

log = logging.getLogger(__name__)

STAGE_WAIT_S = 24 * 3600

# sweep.executor: where the runs train.
EXECUTORS = {
    "inline": "in this process, one group of runs after another (the default)",
    "local": "each group a job of submitit's LocalExecutor: a process on this machine",
    "slurm": "each group a Slurm job through submitit (options: sweep.slurm)",
}


def write_status(run_dir: Path, **status: Any) -> None:
    """Writes a run's ``sweep_run.json`` atomically (process 0 only)."""
    if not parallel.is_writer():
        return
    # atomic (local: temporary file renamed; gs://: one upload): never a half-written status
    write_text(run_dir / STATUS_FILE, json.dumps(status, indent=2) + "\n")


# How runs are trained, not what they are: changing these does not make a finished run stale.
HOW_KEYS = ("vectorize", "cpu_side_by_side", "max_group_size", "num_shards", "shard_index",
            "executor", "slurm")


def _what(config: dict[str, Any]) -> dict[str, Any]:
    """A run's JSON config without the `HOW_KEYS` of its sweep section."""
    sweep = {k: v for k, v in config.get("sweep", {}).items() if k not in HOW_KEYS}
    return {**config, "sweep": sweep}


def _finished(name: str, config: ml_collections.ConfigDict, run_dir: Path) -> bool:
    """Whether the run finished before (then it is skipped); refuses a changed config."""
    status = read_status(run_dir)
    if status.get("status") != "finished":
        return False
    if _what(status.get("config", {})) != _what(to_dict(config)):
        raise ConfigError(f"{run_dir} finished with a different config; delete it or use a "
                          "new sweep workdir")
    log.info("sweep: %s already finished, skipped", name)
    return True


def _train_once(name: str, axes: dict[str, str], seed: int,
                config: ml_collections.ConfigDict, run_dir: Path) -> str:
    """Trains (or resumes, or skips) one run; returns its final status."""
    if _finished(name, config, run_dir):
        return "finished"
    common = {"name": name, "axes": axes, "seed": seed, "config": to_dict(config)}
    write_status(run_dir, status="running", **common)
    start = time.perf_counter()
    try:
        train_and_evaluate(config, run_dir)
    except NonFiniteLossError as e:
        log.warning("sweep: %s failed: %s", name, e)
        write_status(run_dir, status="failed", error=str(e), **common)
        return "failed"
    write_status(run_dir, status="finished", seconds=time.perf_counter() - start, **common)
    return "finished"


def plan_runs(config: ml_collections.ConfigDict, runs: list[GridRun], sweep_dir: Path,
              group: bool | None = None) -> list[list[GridRun]]:
    """The unfinished ``runs`` as groups that train together (a run alone is a group of
    one, with a log line saying why), in grid order. Reads status files only.

    ``group``: whether to group at all (default: `vectorizes` ``sweep.vectorize`` here; a
    scheduler groups unless it is False, and each job decides on its own backend).
    """
    todo = [r for r in runs if not _finished(r.name, r.config, run_dir(sweep_dir, r))]
    setting = config.sweep.vectorize
    if not (vectorizes(setting) if group is None else group):
        if setting == AUTO and len(todo) > 1 and len(parallel.cpu_run_slots()) < 2:
            log.info("sweep: sweep.vectorize=auto trains the %d runs one after another on %s "
                     "(groups pay off on GPU/TPU; sweep.vectorize=True groups them here)",
                     len(todo), jax.default_backend().upper())
        return [[r] for r in todo]
    groups = plan_groups(todo, lambda r: shared_settings(r.config),
                         config.sweep.max_group_size)
    for g in groups:
        if len(g) == 1 and len(todo) > 1:
            log.info("sweep: %s trains alone: %s", g[0].name, why_alone(
                g[0], todo, lambda a, b: differences(a.config, b.config),
                lambda r: r.name))
    return groups


def _plan(config: ml_collections.ConfigDict, runs: list[GridRun],
          sweep_dir: Path) -> list[tuple[list[GridRun], PreparedGroup | None]]:
    """The unfinished runs as groups trained together (checked and built, nothing written)
    or runs trained alone (``None``), in grid order."""
    plan = []
    for group in plan_runs(config, runs, sweep_dir):
        if len(group) == 1:
            plan.append((group, None))
            continue
        try:
            plan.append((group, prepare_group([(r.name, r.config, run_dir(sweep_dir, r))
                                               for r in group])))
        except UnvmappableModelError as e:
            if config.sweep.vectorize is True:
                raise
            log.info("sweep: sweep.vectorize=auto trains %s one after another: %s",
                     ", ".join(r.name for r in group), e)
            plan.extend(([r], None) for r in group)
    return plan


AUTO = "auto"


def vectorizes(setting: bool | str, backend: str | None = None) -> bool:
    """Whether ``sweep.vectorize`` groups runs on ``backend`` (default: JAX's default).

    ``True``/``False`` as given; ``"auto"`` is True on GPU and TPU and False on CPU, where
    the runs train side by side instead (`side_by_side`). On CPU (2 cores, the default
    study) 8 stacked runs trained at 483 examples/s against 805 for one run at a time, and
    the study took 12 min 53 s together against 9 min 28 s one after another on one core
    (README, "Runs trained together").
    """
    if setting == AUTO:
        return (backend or jax.default_backend()) != "cpu"
    return bool(setting)


def _train_group(runs: list[GridRun], prepared: PreparedGroup,
                 sweep_dir: Path) -> dict[str, str]:
    """Trains a group of runs together; returns each run's final status."""
    common = {r.name: {"name": r.name, "axes": r.axes, "seed": r.seed,
                       "config": to_dict(r.config), "trained_with": len(runs)} for r in runs}
    for r in runs:
        write_status(run_dir(sweep_dir, r), status="running", **common[r.name])
    start = time.perf_counter()
    statuses = {}
    for r, result in zip(runs, train_group(prepared), strict=True):
        if result.error is not None:
            write_status(run_dir(sweep_dir, r), status="failed", error=result.error,
                         **common[r.name])
            statuses[r.name] = "failed"
        else:
            write_status(run_dir(sweep_dir, r), status="finished",
                         seconds=time.perf_counter() - start, **common[r.name])
            statuses[r.name] = "finished"
    return statuses


def train_stages(config: ml_collections.ConfigDict, sweep_dir: Path) -> None:
    """Trains (resumes, or skips when finished) the sweep's stages, in order.

    Raises:
      ConfigError: a stage failed (its loss became NaN): the runs reading it cannot go on.
    """
    for name, stage, stage_dir in stage_configs(config, sweep_dir):
        log.info("sweep: stage %s -> %s", name, stage_dir)
        if _train_once(f"stage {name}", {"stage": name}, stage.seed, stage,
                       stage_dir) != "finished":
            raise ConfigError(f"sweep stage {name!r} failed (see {stage_dir}); the runs "
                              "that start from it cannot go on")


def _stages(config: ml_collections.ConfigDict, sweep_dir: Path) -> None:
    """Trains the stages (shard 0) or waits until they are finished (other shards)."""
    if config.sweep.shard_index == 0:
        train_stages(config, sweep_dir)
        return
    for name, _, stage_dir in stage_configs(config, sweep_dir):
        waited = 0.0
        while read_status(stage_dir).get("status") != "finished":
            if read_status(stage_dir).get("status") == "failed" or waited > STAGE_WAIT_S:
                raise ConfigError(f"sweep stage {name!r} in {stage_dir} did not finish")
            time.sleep(10)
            waited += 10


def _check_sweep(config: ml_collections.ConfigDict) -> None:
    s = config.sweep
    check_choice("sweep.executor", s.executor, EXECUTORS)
    check_positive("sweep.num_shards", s.num_shards)
    if s.executor != "inline" and s.num_shards != 1:
        raise ConfigError(f"sweep.num_shards={s.num_shards} splits runs over processes by "
                          f"hand; with sweep.executor={s.executor!r} the scheduler spreads "
                          "them: leave sweep.num_shards at 1")
    if s.executor != "inline" and importlib.util.find_spec("submitit") is None:
        raise ConfigError(f"sweep.executor={s.executor!r} submits jobs through submitit, which "
                          "is not installed: pip install 'transfusion_jax[cluster]'")
    if not 0 <= s.shard_index < s.num_shards:
        raise ConfigError(f"sweep.shard_index={s.shard_index} must be in [0, "
                          f"{s.num_shards})")
    if not (isinstance(s.vectorize, bool) or s.vectorize == AUTO):
        raise ConfigError(f"sweep.vectorize={s.vectorize!r} is not valid; choose 'auto' (the "
                          "default: together on GPU/TPU, one after another on CPU), True (runs "
                          "that differ only in seed, init and schedule train together) or "
                          "False (one run after another, the fallback)")
    check_positive("sweep.max_group_size", s.max_group_size, allow_zero=True)
    check_positive("sweep.cpu_side_by_side", s.cpu_side_by_side, allow_zero=True)


def _validate_all(config: ml_collections.ConfigDict, sweep_dir: Path,
                  runs: list) -> None:
    """Checks every stage's and run's config (names, numbers, options) before any trains."""
    from transfusion_jax.train.setup import validate

    devices = parallel.num_data_shards(parallel.data_mesh())
    named = [(f"stage {name}", stage) for name, stage, _ in stage_configs(config, sweep_dir)]
    for name, run_config in named + [(f"run {r.name}", r.config) for r in runs]:
        try:
            validate(run_config, devices)
        except ConfigError as e:
            raise ConfigError(f"sweep {name}: {e}") from e


def wanted_cpu_run_slots(config: ml_collections.ConfigDict) -> int:
    """How many runs a sweep command trains side by side if JAX's backend is the CPU
    (`side_by_side`): ``sweep.cpu_side_by_side``, 0 meaning one per core this process may
    use, under ``sweep.vectorize=auto`` and the ``inline`` executor; otherwise 0."""
    s = config.sweep
    check_positive("sweep.cpu_side_by_side", s.cpu_side_by_side, allow_zero=True)
    if s.vectorize != AUTO or s.executor != "inline":
        return 0
    if s.cpu_side_by_side:
        return int(s.cpu_side_by_side)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _train_plan(plan: list[tuple[list[GridRun], PreparedGroup | None]],
                sweep_dir: Path) -> dict[str, str]:
    """Trains each part of a `_plan` in order; returns each run's final status."""
    statuses: dict[str, str] = {}
    slots = parallel.cpu_run_slots()
    if len(slots) > 1 and len(plan) > 1 and all(p is None for _, p in plan):
        runs = [group[0] for group, _ in plan]
        return train_side_by_side(
            [r.name for r in runs],
            lambda i: _train_once(runs[i].name, runs[i].axes, runs[i].seed, runs[i].config,
                                  run_dir(sweep_dir, runs[i])),
            slots[:len(runs)])
    start = time.perf_counter()
    for i, (group, prepared) in enumerate(plan):
        eta = ""
        if i:
            per_part = (time.perf_counter() - start) / i
            eta = f", about {per_part * (len(plan) - i) / 60:.1f} min left"
        names = group[0].name if len(group) == 1 else f"{len(group)} runs together"
        log.info("sweep: part %d/%d: %s%s", i + 1, len(plan), names, eta)
        if prepared is None:
            run = group[0]
            statuses[run.name] = _train_once(run.name, run.axes, run.seed, run.config,
                                             run_dir(sweep_dir, run))
        else:
            statuses.update(_train_group(group, prepared, sweep_dir))
    return statuses


def train_runs(config: ml_collections.ConfigDict, runs: list[GridRun],
               sweep_dir: Path) -> dict[str, str]:
    """Trains ``runs`` of the sweep as ``inline`` does: finished ones skipped, the others
    grouped where they can train together, cut-off ones resumed from their newest
    checkpoint (what a submitted job runs). Returns ``{name: "finished" | "failed"}``."""
    statuses = {r.name: "finished" for r in runs}  # finished before
    statuses.update(_train_plan(_plan(config, runs, sweep_dir), sweep_dir))
    return statuses


def finish_sweep(config: ml_collections.ConfigDict, sweep_dir: Path, runs: list[GridRun],
                 statuses: dict[str, str]) -> dict[str, Any]:
    """Logs the failed runs and writes the report once every run has ended.

    Returns:
      ``{"runs": statuses, "report": files, or None while runs of other shards are not
      done}``.
    """
    failed = [name for name, status in statuses.items() if status == "failed"]
    if failed:
        log.warning("sweep: %d run(s) failed and are reported as such: %s", len(failed),
                    ", ".join(failed))
    pending = [r.name for r in runs
               if read_status(run_dir(sweep_dir, r)).get("status") not in ("finished",
                                                                           "failed")]
    if pending:
        log.info("sweep: this shard is done; %d runs of other shards are not: %s",
                 len(pending), ", ".join(pending[:5]))
        return {"runs": statuses, "report": None}
    from transfusion_jax.experiments.report import report_sweep

    return {"runs": statuses, "report": report_sweep(config, sweep_dir, runs)}


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the sweep's runs in ``workdir`` (this shard's, or every run through the
    scheduler of ``sweep.executor``); reports when all are done.

    Returns:
      ``{"runs": {name: status}, "report": files or None}`` (and ``"jobs"`` with a
      scheduler).
    """
    sweep_dir = to_path(workdir)
    _check_sweep(config)
    runs = expand_grid(config, sweep_dir)
    _validate_all(config, sweep_dir, runs)
    if config.sweep.executor != "inline":
        from transfusion_jax.experiments.scheduler import run_sweep_jobs

        return run_sweep_jobs(config, sweep_dir, runs)
    mine = runs[config.sweep.shard_index::config.sweep.num_shards]
    log.info("sweep: %d runs (%d on this shard) in %s", len(runs), len(mine), sweep_dir)
    plan = _plan(config, mine, sweep_dir)
    _stages(config, sweep_dir)
    statuses: dict[str, str] = {r.name: "finished" for r in mine}  # finished before
    statuses.update(_train_plan(plan, sweep_dir))
    return finish_sweep(config, sweep_dir, runs, statuses)
