"""One run of a group: what it owns besides its slice of the stacked state.

A `Member` holds what `transfusion_jax.train.loop` keeps for a run trained alone: its
config and setup, its workdir's `Checkpointer` and `MetricWriter`, its convergence tracker,
its evaluators' latest results, its input pipeline, and its train time. It is opened the
way the single-run loop opens a workdir (`open_member`: a fresh start from `initial_state`,
or a resume from the newest checkpoint after the same config check) and it writes the same
files, through the same functions (`save`, `finish`).
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import jax
import ml_collections
from etils import epath
from jax.sharding import Mesh

from transfusion_jax import parallel
from transfusion_jax.checkpoints import Checkpointer, abstract_like
from transfusion_jax.data import train_dataset, train_iterator
from transfusion_jax.paths import to_path
from transfusion_jax.train.convergence import ConvergenceTracker
from transfusion_jax.train.loop import _finish, _meta, _saved_results
from transfusion_jax.train.resume import check_resume
from transfusion_jax.train.run_lock import RunLock
from transfusion_jax.train.setup import (
    RunSetup,
    abstract_state,
    build_run,
    initial_state,
    validate,
)
from transfusion_jax.train.state import TrainState
from transfusion_jax.train.writer import MetricWriter


@dataclasses.dataclass
class Member:
    """A run of a group.

    Attributes:
      name: the run's name (for messages).
      config: its full training config.
      workdir: its workdir (absolute).
      setup: its `RunSetup` (data sources, model, optimizer).
      lock: its workdir's `RunLock`, held from `check_member` to `close`.
      ckpt, writer: its checkpointer and metric writer (set by `open_member`).
      tracker: its convergence record.
      last: its evaluators' latest results, by evaluator name.
      elapsed: train time of earlier sessions, seconds (from the checkpoint on resume).
      state: its step-0 or restored `TrainState` (until the group stacks it).
      data_state: the saved input-pipeline position, or None for a fresh start.
      initial_variables: its step-0 model variables (host arrays).
      iterator: its train-batch iterator.
      error: why it failed (a non-finite loss), or None.
    """

    name: str
    config: ml_collections.ConfigDict
    workdir: epath.Path
    setup: RunSetup
    lock: RunLock
    ckpt: Checkpointer | None = None
    writer: MetricWriter | None = None
    tracker: ConvergenceTracker | None = None
    last: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    elapsed: float = 0.0
    state: TrainState | None = None
    data_state: dict[str, Any] | None = None
    initial_variables: dict[str, Any] | None = None
    iterator: Any = None
    error: str | None = None

    @property
    def start(self) -> int:
        """The step its state is at (0 for a fresh start)."""
        return int(jax.device_get(self.state.step))


def prepare_member(name: str, config: ml_collections.ConfigDict, workdir: str | Path,
                   num_data_shards: int) -> Member:
    """Validates ``config`` and builds the run's setup; reads and writes nothing (a source
    stage may not be trained yet).

    Raises:
      ConfigError, DataError: as `transfusion_jax.train.loop.train_and_evaluate` does.
    """
    validate(config, num_data_shards)
    path = to_path(workdir)
    return Member(name, config, path, build_run(config), RunLock(path))


def check_member(member: Member) -> None:
    """What a run trained alone checks before its first file is written: that its config
    may resume the run saved in its workdir (`transfusion_jax.train.resume`), or else that
    its initialisation can be built (its source read and checked,
    `transfusion_jax.train.sources`); the step-0 state is kept. An existing workdir is locked
    first (`RunLock`: no other process trains it meanwhile). Writes nothing.

    Raises:
      ConfigError, CheckpointError: as `transfusion_jax.train.loop.train_and_evaluate`
        (`WorkdirBusyError` when another process trains the run).
    """
    member.lock.acquire()
    if check_resume(member.config, member.workdir) is None:
        member.state = jax.device_get(initial_state(member.config, member.setup))


def open_member(member: Member, mesh: Mesh, num_threads: int) -> None:
    """Opens the run's workdir: a fresh state, or the newest checkpoint's (as the single-run
    loop resumes: same config check, metrics past the checkpoint dropped), and its input
    pipeline (``num_threads`` reader threads: many pipelines run side by side)."""
    config, setup = member.config, member.setup
    if parallel.is_writer():
        member.workdir.mkdir(parents=True, exist_ok=True)
    member.lock.acquire()  # a fresh workdir: locked as soon as it exists
    member.ckpt = Checkpointer(member.workdir / "checkpoints",
                               keep_last=config.checkpoint.keep_last,
                               keep_every=config.checkpoint.keep_every,
                               async_save=config.checkpoint.async_save)
    member.writer = MetricWriter(member.workdir, tensorboard=config.log.tensorboard)
    member.tracker = ConvergenceTracker(config.convergence.metric,
                                        config.convergence.threshold, config.convergence.mode)
    latest = member.ckpt.latest_step()
    if latest is None:
        if member.state is None:  # nothing was saved when the group was prepared
            member.state = jax.device_get(initial_state(config, setup))
        member.initial_variables = member.state.variables
    else:
        check_resume(config, member.workdir)  # again: the workdir may have changed since
        target = abstract_like(abstract_state(config, setup), parallel.replicated(mesh))
        state, member.data_state, saved = member.ckpt.restore(latest, target)
        member.state = jax.device_get(state)
        member.tracker = ConvergenceTracker.from_dict(saved["convergence"])
        member.last, member.elapsed = _saved_results(saved), saved["elapsed_s"]
        member.writer.truncate_after(latest)
        member.initial_variables = member.ckpt.read_variables(0)
    member.lock.announce()
    dataset = train_dataset(setup.train_source, config.data, config.train.batch_size,
                            config.seed)
    member.iterator = train_iterator(dataset, num_threads, member.data_state)


def save(member: Member, step: int, state: TrainState, elapsed: float) -> None:
    """Checkpoints the run at ``step`` (``state`` is its own, replicated), as the single-run
    loop does: state, input position, config, convergence record, latest evaluations."""
    member.writer.flush()  # a remote metrics.jsonl holds every line up to the checkpoint
    member.ckpt.save(step, state, member.iterator.get_state(),
                     _meta(member.config, step, member.tracker, member.last,
                           member.elapsed + elapsed))


def finish(member: Member, elapsed: float, examples_per_sec: float) -> dict[str, Any]:
    """Writes the run's summary and curves (`transfusion_jax.train.loop`'s); returns it."""
    rate = types.SimpleNamespace(examples_per_sec=examples_per_sec)
    member.writer.flush()
    return _finish(member.config, member.workdir, member.tracker, member.last,
                   member.elapsed + elapsed, rate, member.ckpt)


def close(member: Member) -> None:
    """Awaits the run's pending checkpoint saves, closes its files, drops its lock."""
    try:
        if member.ckpt is not None:
            member.ckpt.close()
        if member.writer is not None:
            member.writer.close()
    finally:
        member.lock.release()
