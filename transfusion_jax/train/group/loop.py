"""The training loop of a group of runs: `prepare_group`, then `train_group`.

`prepare_group` checks everything before a file is written: each run's config (as a run
trained alone checks it), that the runs can train together (`rules`), and that the model's
train step can be mapped over runs (traced on shapes alone). `train_group` then opens every
run's workdir (fresh, or resumed from its own newest checkpoint), stacks the states and
steps them together. Its schedule is the single-run loop's: train metrics every
``log.every_steps``, each evaluator every ``every_steps`` and at the last step, checkpoints
every ``checkpoint.every_steps`` and at the last step, losses checked for NaN/inf at each of
these. A run whose loss became non-finite is reported failed with the single-run loop's
message and writes nothing more; its state was already frozen on the device at that step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.data import train_dataset
from transfusion_jax.models import conv as conv_lib
from transfusion_jax.train.evaluators import MAIN, EvalContext, build_group_evaluators
from transfusion_jax.train.freeze import frozen_bn_modules
from transfusion_jax.train.group.member import (
    Member,
    check_member,
    close,
    finish,
    open_member,
    prepare_member,
    save,
)
from transfusion_jax.train.group.rules import differences
from transfusion_jax.train.group.step import (
    check_vmappable,
    make_group_train_step,
    schedule_table,
    stack_trees,
    take_run,
)
from transfusion_jax.train.loop import (
    NonFiniteLossError,
    _check_finite,
    _record_eval,
    due_at,
)
from transfusion_jax.train.metrics import LossAccuracy
from transfusion_jax.train.progress import Progress
from transfusion_jax.train.setup import abstract_state

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedGroup:
    """Runs checked and built, nothing written yet (`prepare_group`)."""

    members: list[Member]
    mesh: Mesh
    step: Callable
    blank: dict[str, np.ndarray]  # a zero batch of one run: what a waiting run is fed


@dataclasses.dataclass
class RunResult:
    """How one run of a group ended: its summary, or why it failed."""

    name: str
    summary: dict[str, Any] | None = None
    error: str | None = None


def prepare_group(runs: Sequence[tuple[str, ml_collections.ConfigDict, str | Path]],
                  devices: Sequence[jax.Device] | None = None) -> PreparedGroup:
    """Checks and builds a group of runs ``[(name, config, workdir)]``; writes nothing.

    The group trains on a `parallel.grid_mesh` over ``devices`` (default: every device).

    Raises:
      ConfigError, DataError: a run's config or data (as training it alone would), or a
        model whose train step cannot be mapped over runs (the message names the fallback,
        ``sweep.vectorize=False``).
      ValueError: runs that differ in a setting they must share (`rules`).
    """
    mesh = parallel.grid_mesh(len(runs), devices)
    members = [prepare_member(name, config, workdir, parallel.num_data_shards(mesh))
               for name, config, workdir in runs]
    first = members[0]
    for other in members[1:]:
        if diff := differences(first.config, other.config):
            raise ValueError(f"runs {first.name} and {other.name} cannot train together: "
                             f"they differ in {', '.join(diff)}")
    # On CPU, auto convolutions in the matmul form: vmapped, XLA's are grouped (slow).
    first.setup = dataclasses.replace(first.setup,
                                      model=conv_lib.for_stacked_runs(first.setup.model))
    config, setup = first.config, first.setup
    abstract = abstract_state(config, setup)
    step = make_group_train_step(setup.model, config.train, setup.loss_name,
                                 setup.meta.multi_label, mesh,
                                 frozen_bn_modules(config.train, abstract.params))
    example = train_dataset(setup.train_source, config.data, config.train.batch_size,
                            config.seed)[0]
    global_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (x.shape[0] * jax.process_count(), *x.shape[1:]), x.dtype), example)
    check_vmappable(step, abstract, LossAccuracy.empty(), global_batch,
                    len(members), config.train.steps, config.model.name)
    return PreparedGroup(members, mesh, step, jax.tree.map(np.zeros_like, example))


def train_group(group: PreparedGroup) -> list[RunResult]:
    """Trains (or resumes) every run of ``group`` to its last step, in its own workdir.

    Raises:
      ConfigError, CheckpointError: a run may not resume its workdir, or its initialisation
        cannot be built (a source missing or non-finite); refused before any run of the
        group writes a training file.

    Returns:
      One `RunResult` per run, in order: its summary (as `train_and_evaluate` returns it),
      or the error that stopped it (a non-finite loss).
    """
    threads = max(1, group.members[0].config.data.num_threads // len(group.members))
    try:
        for member in group.members:  # every run locked and checked before any run's file
            check_member(member)
        for member in group.members:
            open_member(member, group.mesh, threads)
        return _train(group)
    finally:
        for member in group.members:
            close(member)


def _train(group: PreparedGroup) -> list[RunResult]:
    members, mesh = group.members, group.mesh
    first = members[0]
    config, setup, total = first.config, first.setup, first.config.train.steps
    num_runs = len(members)
    starts = np.array([m.start for m in members])
    fresh = [m.data_state is None for m in members]
    state = parallel.place_runs(mesh, stack_trees([m.state for m in members]))
    initial_variables = stack_trees([m.initial_variables for m in members])
    for m in members:  # the stacked copy is the one that trains
        m.state = m.initial_variables = None
    tables = parallel.place_runs(mesh, np.stack([schedule_table(m.config.train)
                                                 for m in members]))
    alive = parallel.place_runs(mesh, np.ones(num_runs, bool))
    evaluators = build_group_evaluators(config, EvalContext(
        model=setup.model, mesh=mesh, data=config.data, meta=setup.meta,
        loss_name=setup.loss_name, blocks=setup.model.block_names(),
        initial_variables=initial_variables))
    take = take_run(mesh)
    for r, m in enumerate(members):
        if fresh[r]:  # step 0: the initialisation, kept for similarity-to-init analyses
            save(m, 0, take(state, r), 0.0)

    def empty_metrics():
        return parallel.place_runs(mesh, stack_trees([LossAccuracy.empty()] * num_runs))

    def running(step: int) -> list[int]:
        return [r for r in range(num_runs) if starts[r] < step and members[r].error is None]

    names = [m.name for m in members]
    log.info("group: %d runs trained together as one program on a %s (runs x data) mesh: %s",
             num_runs, "x".join(map(str, mesh.devices.shape)),
             ", ".join(names) if num_runs <= 4 else f"{names[0]} ... {names[-1]}")
    metrics = empty_metrics()
    pending: list[jax.Array] = []
    first_step = int(starts.min()) + 1
    progress = Progress(total, config.train.batch_size * num_runs, first_step - 1)
    flags: dict[bytes, jax.Array] = {}
    began = [0.0] * num_runs  # when each run took its first step here: its train time since
    for step in range(first_step, total + 1):
        started = starts < step
        for r in np.flatnonzero(starts == step - 1):
            began[r] = time.perf_counter()
        batch = stack_trees([next(m.iterator) if started[r] and m.error is None else group.blank
                             for r, m in enumerate(members)])
        started_dev = flags.get(started.tobytes())
        if started_dev is None:
            started_dev = flags[started.tobytes()] = parallel.place_runs(mesh, started)
        state, metrics, loss, alive = group.step(state, metrics,
                                                 parallel.make_run_batch(mesh, batch), tables,
                                                 started_dev, alive)
        pending.append(loss)
        do_log, due, do_ckpt = due_at(step, total, config, evaluators)
        if not (do_log or due or do_ckpt):
            continue
        _record_failures(members, pending, step, starts)
        pending = []
        if all(m.error is not None for m in members):
            break  # every run failed: nothing left to train
        active = running(step)
        if do_log:
            means = jax.device_get(jax.vmap(LossAccuracy.compute)(metrics))
            for r in active:
                members[r].writer.write(step, "train", {k: float(v[r]) for k, v in means.items()})
            metrics = empty_metrics()
        for evaluator in due:
            results = evaluator.run(state, step)
            for r in active:
                m = members[r]
                _record_eval(evaluator.name, results[r], step, total, m.writer, m.tracker, m.last,
                             m.name)
        if do_log and active:
            log.info("group of %d: %s", len(active),
                     progress.line(step, float(np.mean(means["loss"][active])),
                                   float(np.mean(means["accuracy"][active])),
                                   _recent(members, active)))
        if do_ckpt:
            for r in active:
                save(members[r], step, take(state, r), time.perf_counter() - began[r])
        progress.restart_clock(step)
    end = time.perf_counter()
    elapsed = [end - b if s < total else 0.0 for b, s in zip(began, starts, strict=True)]
    done = [r for r in range(num_runs) if members[r].error is None]
    for evaluator in evaluators:  # finished runs re-opened: evaluate their final state again
        missing = [r for r in done if evaluator.name not in members[r].last]
        if missing:
            results = evaluator.run(state, total)
            for r in missing:
                m = members[r]
                _record_eval(evaluator.name, results[r], total, total, m.writer, m.tracker,
                             m.last, m.name)
    rate = progress.examples_per_sec / num_runs
    return [RunResult(m.name, error=m.error) if m.error is not None
            else RunResult(m.name, summary=finish(m, elapsed[r], rate))
            for r, m in enumerate(members)]


def _record_failures(members: list[Member], pending: list[jax.Array], step: int,
                     starts: np.ndarray) -> None:
    """Marks the runs whose loss became non-finite since the last check as failed, with the
    single-run loop's message (the first bad step, the last good checkpoint)."""
    losses = np.asarray(jax.device_get(jnp.stack(pending)))  # (k, R)
    first = step - len(pending) + 1
    for r, m in enumerate(members):
        if m.error is not None:
            continue
        own = max(first, int(starts[r]) + 1)  # the run's first step in this stretch
        try:
            _check_finite(list(losses[own - first:, r]), own, m.ckpt.directory,
                          m.ckpt.latest_step())
        except NonFiniteLossError as e:
            m.error = str(e)
            log.warning("group: %s failed, the others go on: %s", m.name, e)


def _recent(members: list[Member], active: list[int]) -> str:
    """The latest main evaluation over the active runs, as ``accuracy 0.91-0.95``."""
    tracker = members[active[0]].tracker
    values = [members[r].last[MAIN][tracker.metric] for r in active
              if tracker.metric in members[r].last.get(MAIN, {})]
    return f"{tracker.metric} {min(values):.4f}-{max(values):.4f}" if values else ""
