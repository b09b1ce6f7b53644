"""The training loop: train, evaluate, track convergence, checkpoint, resume.

`train_and_evaluate(config, workdir)` is the whole job. Re-running it on the same workdir
resumes from the newest checkpoint (state, data-iterator position, convergence record), so
a run killed at any point and restarted ends exactly where an uninterrupted run does.
A NaN or infinite loss stops the run with `NonFiniteLossError` naming the step; the state
is checked before every checkpoint, so the last checkpoint on disk is always a good one.
The config, the data, the init source (`sources`) and, on resume, the saved run's settings
(`resume`) are checked before the first file is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from transfusion_jax import parallel
from transfusion_jax.checkpoints import Checkpointer, abstract_like
from transfusion_jax.config import to_dict
from transfusion_jax.data import train_dataset, train_iterator
from transfusion_jax.paths import to_path
from transfusion_jax.runs import read_metrics
from transfusion_jax.train.convergence import ConvergenceTracker
from transfusion_jax.train.evaluators import MAIN, EvalContext, build_evaluators
from transfusion_jax.train.freeze import frozen_bn_modules
from transfusion_jax.train.plots import plot_curves
from transfusion_jax.train.progress import Progress
from transfusion_jax.train.resume import check_resume
from transfusion_jax.train.run_lock import RunLock
from transfusion_jax.train.setup import abstract_state, build_run, initial_state, validate
from transfusion_jax.train.step import empty_metrics, make_train_step
from transfusion_jax.train.summary import write_summary
from transfusion_jax.train.writer import MetricWriter

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def due_at(step: int, total: int, config: ml_collections.ConfigDict,
           evaluators: Sequence[Any]) -> tuple[bool, list[Any], bool]:
    """What step ``step`` of ``total`` does besides training: ``(log, the evaluators due,
    checkpoint)``, each on its ``every_steps`` and all at the last step."""
    last = step == total
    return (step % config.log.every_steps == 0 or last,
            [e for e in evaluators if step % e.every_steps == 0 or last],
            step % config.checkpoint.every_steps == 0 or last)


def _check_finite(losses: list[jax.Array], first_step: int, checkpoints: Path,
                  last_good: int | None) -> None:
    """Raises `NonFiniteLossError` at the first non-finite loss of ``losses``."""
    if not losses:
        return
    values = np.asarray(jax.device_get(jax.numpy.stack(losses)))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        step = first_step + int(bad[0])
        where = (f"the last good checkpoint is step {last_good} in {checkpoints}"
                 if last_good is not None else "no checkpoint was written")
        raise NonFiniteLossError(
            f"training loss became {values[bad[0]]} at step {step}; stopped without saving "
            f"({where}). Lower train.schedule.base_lr, add warm-up "
            "(train.schedule.warmup_steps) or set train.grad_clip_norm.")


def _title(config: ml_collections.ConfigDict) -> str:
    return (f"{config.model.name} ({config.init.name} init) on {config.data.name}, "
            f"seed {config.seed}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains (or resumes) the run of ``config`` in ``workdir``; returns its summary."""
    workdir = to_path(workdir)
    mesh = parallel.data_mesh()
    validate(config, parallel.num_data_shards(mesh))
    setup = build_run(config)
    lock = RunLock(workdir)  # no second process trains this workdir meanwhile
    try:
        lock.acquire()
        # Everything that can refuse the run is checked before its first file is written.
        initial = initial_state(config, setup) if check_resume(config, workdir) is None else None
        if parallel.is_writer():
            workdir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # a fresh workdir: locked as soon as it exists
        ckpt = Checkpointer(workdir / "checkpoints", keep_last=config.checkpoint.keep_last,
                            keep_every=config.checkpoint.keep_every,
                            async_save=config.checkpoint.async_save)
        writer = MetricWriter(workdir, tensorboard=config.log.tensorboard)
        try:
            return _run(config, workdir, mesh, setup, ckpt, writer, initial, lock)
        finally:
            ckpt.close()
            writer.close()
    finally:
        lock.release()


def _run(config, workdir, mesh, setup, ckpt, writer, initial, lock) -> dict:
    total = config.train.steps
    replicated = parallel.replicated(mesh)
    tracker = ConvergenceTracker(config.convergence.metric, config.convergence.threshold,
                                 config.convergence.mode)
    latest = ckpt.latest_step()
    last: dict[str, dict[str, float]] = {}  # evaluator name -> its latest result
    elapsed = 0.0
    if latest is None:
        state = parallel.replicate(mesh, initial)
        data_state = None
        initial_variables = jax.device_get(state.variables)
    else:
        target = abstract_like(abstract_state(config, setup), replicated)
        state, data_state, saved = ckpt.restore(latest, target)
        tracker = ConvergenceTracker.from_dict(saved["convergence"])
        last, elapsed = _saved_results(saved), saved["elapsed_s"]
        writer.truncate_after(latest)
        log.info("resumed from step %d in %s", latest, ckpt.directory)
        initial_variables = ckpt.read_variables(0)
    lock.announce()
    start = int(jax.device_get(state.step))

    train_step = make_train_step(setup.model, setup.tx, setup.loss_name,
                                 setup.meta.multi_label, mesh,
                                 frozen_bn_modules(config.train, state.params))
    evaluators = build_evaluators(config, EvalContext(
        model=setup.model, mesh=mesh, data=config.data, meta=setup.meta,
        loss_name=setup.loss_name, blocks=setup.model.block_names(),
        initial_variables=initial_variables))
    dataset = train_dataset(setup.train_source, config.data, config.train.batch_size,
                            config.seed)
    iterator = train_iterator(dataset, config.data.num_threads, data_state)
    if latest is None:  # step 0: the initialisation, kept for similarity-to-init analyses
        ckpt.save(0, state, iterator.get_state(), _meta(config, 0, tracker, last, 0.0))

    def run_eval(evaluator, step: int) -> None:
        _record_eval(evaluator.name, evaluator.run(state, step), step, total, writer, tracker,
                     last)

    metrics = empty_metrics(mesh)
    pending: list[jax.Array] = []
    progress = Progress(total, config.train.batch_size, start)
    t0 = time.perf_counter()
    for step in range(start + 1, total + 1):
        batch = parallel.make_global_batch(mesh, next(iterator))
        state, metrics, loss = train_step(state, metrics, batch)
        pending.append(loss)
        do_log, due, do_ckpt = due_at(step, total, config, evaluators)
        if not (do_log or due or do_ckpt):
            continue
        _check_finite(pending, step - len(pending) + 1, ckpt.directory, ckpt.latest_step())
        pending = []
        if do_log:
            train_result = {k: float(v) for k, v in metrics.compute().items()}
            writer.write(step, "train", train_result)
            metrics = empty_metrics(mesh)
        for evaluator in due:
            run_eval(evaluator, step)
        if do_log:
            main = last.get(MAIN, {})
            recent = f"{tracker.metric}={main[tracker.metric]:.4f}" if main else ""
            log.info(progress.line(step, train_result["loss"], train_result["accuracy"],
                                   recent))
        if do_ckpt:
            run_time = elapsed + time.perf_counter() - t0
            writer.flush()  # a remote metrics.jsonl holds every line up to the checkpoint
            ckpt.save(step, state, iterator.get_state(),
                      _meta(config, step, tracker, last, run_time))
        progress.restart_clock(step)
    elapsed += time.perf_counter() - t0
    for evaluator in evaluators:  # A finished run re-opened: evaluate its final state again.
        if evaluator.name not in last:
            run_eval(evaluator, total)
    writer.flush()
    return _finish(config, workdir, tracker, last, elapsed, progress, ckpt)


def _record_eval(name: str, result: dict[str, float], step: int, total: int,
                 writer: MetricWriter, tracker: ConvergenceTracker, last: dict,
                 run: str = "") -> None:
    """Logs one evaluator's result; the main one's feeds the convergence record, whose line
    is written at the step it is reached (or at the last step, saying it was not). ``run``
    names the run in the log line (runs trained together)."""
    last[name] = result
    writer.write(step, name, result)
    if name != MAIN:
        return
    if tracker.update(step, result):
        log.info("convergence: %seval %s reached %s at step %d", f"{run}: " if run else "",
                 tracker.metric, tracker.threshold, step)
    if tracker.step == step or (step == total and tracker.step is None):
        writer.write(step, "convergence", {"threshold": tracker.threshold,
                                           "reached": float(tracker.step is not None),
                                           "steps_to_threshold": tracker.step or np.nan})


def _saved_results(saved: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The evaluators' latest results from a checkpoint's metadata."""
    results = dict(saved.get("last_evals", {}))
    if saved.get("last_eval"):
        results[MAIN] = saved["last_eval"]
    return results


def _meta(config, step: int, tracker: ConvergenceTracker, last: dict,
          elapsed: float) -> dict[str, Any]:
    return {"config": to_dict(config), "step": step, "convergence": tracker.to_dict(),
            "last_eval": last.get(MAIN, {}),
            "last_evals": {k: v for k, v in last.items() if k != MAIN}, "elapsed_s": elapsed}


def _finish(config, workdir: Path, tracker, last, elapsed, progress, ckpt) -> dict:
    ckpt.wait()
    summary = {
        "title": _title(config), "steps": config.train.steps, "wall_time_s": elapsed,
        "examples_per_sec": progress.examples_per_sec, "final_eval": last.get(MAIN, {}),
        "final_evals": {k: v for k, v in last.items() if k != MAIN},
        "convergence": tracker.to_dict(),
        "files": {"metrics": str(workdir / "metrics.jsonl"),
                  "checkpoints": str(ckpt.directory),
                  "checkpoint_steps": ckpt.all_steps()},
    }
    if parallel.is_writer():
        if config.log.plot:
            summary["files"]["curves"] = str(plot_curves(
                read_metrics(workdir), workdir / "curves.png", title=_title(config),
                convergence=summary["convergence"]))
        json_path, md_path = write_summary(workdir, summary)
        log.info("summary: %s", md_path)
    return summary
