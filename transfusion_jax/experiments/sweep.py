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
compiled program (``sweep.vectorize``, default True; `transfusion_jax.train.group`, groups
from `grouping`); a run that shares its settings with no other trains alone, with a log line
saying why. Re-running the command skips finished runs (their ``sweep_run.json`` says so and
their config is unchanged) and resumes runs that were cut off from their last checkpoint. A
run whose loss becomes NaN is recorded as failed and the sweep goes on. With
``sweep.num_shards = N`` host ``i`` (``sweep.shard_index``) trains ``runs[i::N]``; stages are
trained by shard 0 and awaited by the others; the last shard to finish writes the report
(or run ``job = aggregate`` on the sweep's workdir afterwards).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import ml_collections

from transfusion_jax import parallel
from transfusion_jax.config import ConfigError, check_positive, to_dict
from transfusion_jax.experiments.grid import (
    STATUS_FILE,
    GridRun,
    expand_grid,
    read_status,
    run_dir,
    stage_configs,
)
from transfusion_jax.experiments.grouping import plan_groups, why_alone
from transfusion_jax.paths import to_path, write_text
from transfusion_jax.train.group.loop import PreparedGroup, prepare_group, train_group
from transfusion_jax.train.group.rules import differences, shared_settings
from transfusion_jax.train.loop import NonFiniteLossError, train_and_evaluate

log = logging.getLogger(__name__)

STAGE_WAIT_S = 24 * 3600


def _write_status(run_dir: Path, **status: Any) -> None:
    if not parallel.is_writer():
        return
    # atomic (local: temporary file renamed; gs://: one upload): never a half-written status
    write_text(run_dir / STATUS_FILE, json.dumps(status, indent=2) + "\n")


# How runs are trained, not what they are: changing these does not make a finished run stale.
HOW_KEYS = ("vectorize", "max_group_size")


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
    _write_status(run_dir, status="running", **common)
    start = time.perf_counter()
    try:
        train_and_evaluate(config, run_dir)
    except NonFiniteLossError as e:
        log.warning("sweep: %s failed: %s", name, e)
        _write_status(run_dir, status="failed", error=str(e), **common)
        return "failed"
    _write_status(run_dir, status="finished", seconds=time.perf_counter() - start, **common)
    return "finished"


def _plan(config: ml_collections.ConfigDict, runs: list[GridRun],
          sweep_dir: Path) -> list[tuple[list[GridRun], PreparedGroup | None]]:
    """The unfinished runs as groups trained together (checked and built, nothing written)
    or runs trained alone (``None``), in grid order."""
    todo = [r for r in runs if not _finished(r.name, r.config, run_dir(sweep_dir, r))]
    if not config.sweep.vectorize:
        return [([r], None) for r in todo]
    plan = []
    for group in plan_groups(todo, lambda r: shared_settings(r.config),
                             config.sweep.max_group_size):
        if len(group) == 1:
            log.info("sweep: %s trains alone: %s", group[0].name, why_alone(
                group[0], todo, lambda a, b: differences(a.config, b.config),
                lambda r: r.name))
            plan.append((group, None))
            continue
        plan.append((group, prepare_group([(r.name, r.config, run_dir(sweep_dir, r))
                                           for r in group])))
    return plan


def _train_group(runs: list[GridRun], prepared: PreparedGroup,
                 sweep_dir: Path) -> dict[str, str]:
    """Trains a group of runs together; returns each run's final status."""
    common = {r.name: {"name": r.name, "axes": r.axes, "seed": r.seed,
                       "config": to_dict(r.config), "trained_with": len(runs)} for r in runs}
    for r in runs:
        _write_status(run_dir(sweep_dir, r), status="running", **common[r.name])
    start = time.perf_counter()
    statuses = {}
    for r, result in zip(runs, train_group(prepared), strict=True):
        if result.error is not None:
            _write_status(run_dir(sweep_dir, r), status="failed", error=result.error,
                          **common[r.name])
            statuses[r.name] = "failed"
        else:
            _write_status(run_dir(sweep_dir, r), status="finished",
                          seconds=time.perf_counter() - start, **common[r.name])
            statuses[r.name] = "finished"
    return statuses


def _stages(config: ml_collections.ConfigDict, sweep_dir: Path) -> None:
    """Trains the stages (shard 0) or waits until they are finished (other shards)."""
    for name, stage, stage_dir in stage_configs(config, sweep_dir):
        if config.sweep.shard_index == 0:
            log.info("sweep: stage %s -> %s", name, stage_dir)
            if _train_once(f"stage {name}", {"stage": name}, stage.seed, stage,
                           stage_dir) != "finished":
                raise ConfigError(f"sweep stage {name!r} failed (see {stage_dir}); the runs "
                                  "that start from it cannot go on")
            continue
        waited = 0.0
        while read_status(stage_dir).get("status") != "finished":
            if read_status(stage_dir).get("status") == "failed" or waited > STAGE_WAIT_S:
                raise ConfigError(f"sweep stage {name!r} in {stage_dir} did not finish")
            time.sleep(10)
            waited += 10


def _check_sweep(config: ml_collections.ConfigDict) -> None:
    s = config.sweep
    check_positive("sweep.num_shards", s.num_shards)
    if not 0 <= s.shard_index < s.num_shards:
        raise ConfigError(f"sweep.shard_index={s.shard_index} must be in [0, "
                          f"{s.num_shards})")
    if not isinstance(s.vectorize, bool):
        raise ConfigError(f"sweep.vectorize={s.vectorize!r} is not valid; choose True (runs "
                          "that differ only in seed, init and schedule train together) or "
                          "False (one run after another, the fallback)")
    check_positive("sweep.max_group_size", s.max_group_size, allow_zero=True)


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


def run_sweep(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains this shard's runs of the sweep in ``workdir``; reports when all are done.

    Returns:
      ``{"runs": {name: status}, "report": files or None}``.
    """
    sweep_dir = to_path(workdir)
    _check_sweep(config)
    runs = expand_grid(config, sweep_dir)
    _validate_all(config, sweep_dir, runs)
    mine = runs[config.sweep.shard_index::config.sweep.num_shards]
    log.info("sweep: %d runs (%d on this shard) in %s", len(runs), len(mine), sweep_dir)
    plan = _plan(config, mine, sweep_dir)
    _stages(config, sweep_dir)
    statuses: dict[str, str] = {r.name: "finished" for r in mine}  # finished before
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
