"""Orbax checkpoints: the one module that writes and reads them.

A run's layout is ``WORKDIR/checkpoints/<step>/{state,data,meta}``: the train state (params,
BatchNorm statistics, optimizer state, step, PRNG key), the data-iterator state and the
metadata (config, convergence record, last evaluation). `Checkpointer` writes them during
training and restores a whole state into an abstract target (shapes, dtypes, shardings) to
resume. The last ``keep_last`` steps are kept, step 0 (the initialisation, which every
similarity-to-init and weight-change analysis needs) always, and every multiple of
``keep_every`` (a trajectory for similarity sweeps). Saves are asynchronous and always
awaited before the process exits, so no ``*.orbax-checkpoint-tmp*`` folder survives a clean
exit; a folder left by a killed process is never read (Orbax lists only finalised steps) and
is removed on the next start.

Readers that need no training setup:

- `read_variables(step_dir)`: only the model variables (``params``, ``batch_stats``) of one
  step of this project's checkpoints, restored as NumPy arrays by a partial restore (the
  optimizer state is never read);
- `read_orbax_variables(path)`: any Orbax checkpoint folder holding a ``params`` mapping
  (a step folder, a manager folder, a plain ``PyTreeCheckpointer`` save), restored without a
  target, so a checkpoint saved sharded over other devices or hosts reads anywhere.

A checkpoint that cannot be read, or a save that fails for a reason the user fixes (a full
disk), raises `CheckpointError` naming the step and the fix (`checkpoint_errors`).

Folders may be local or ``gs://`` (`transfusion_jax.paths`): Orbax writes a GCS checkpoint
through tensorstore's own GCS driver, every process its own shards, and marks a finished
step with a ``commit_success.txt`` file instead of renaming a temporary folder (GCS has no
atomic rename); a step folder without it is unfinished and never read.

Runs trained side by side in one process's threads (a sweep on CPU run slots,
`parallel.cpu_run_slots`) save one at a time, each save finished before the next starts:
Orbax names the signals of an asynchronous save by one process-wide operation counter, so
two managers saving at once from two threads wait on each other's keys and time out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from transfusion_jax import parallel
from transfusion_jax.checkpoint_errors import CheckpointError, restore_failed, save_failed
from transfusion_jax.paths import is_remote, to_path

ITEMS = ("state", "data", "meta")
_ORBAX = threading.RLock()  # one Orbax save or restore at a time in a process (see above)
VARIABLE_COLLECTIONS = ("params", "batch_stats")


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` for this project's three items.

    Args:
      directory: where step folders go (created if absent).
      keep_last: how many of the newest checkpoints to keep (step 0 is kept besides).
      keep_every: also keep every step divisible by this (0 = none).
      async_save: write in a background thread (awaited by `wait` / `close`).
    """

    def __init__(self, directory: str | Path, *, keep_last: int = 3, keep_every: int = 0,
                 async_save: bool = True):
        self.directory = to_path(directory)
        from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

        keep = [policy.LatestN(keep_last), policy.CustomSteps([0])]
        if keep_every:
            keep.append(policy.EveryNSteps(keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy.AnyPreservationPolicy(keep), create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        with _ORBAX:
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=ITEMS)
        self._pending: int | None = None  # the newest step handed to Orbax
        self._failed = False  # a save failed (and was raised): close() does not raise again

    def latest_step(self) -> int | None:
        """The newest finalised step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every finalised step, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any],
             meta: dict[str, Any]) -> None:
        """Starts saving ``step`` (asynchronously when enabled).

        Raises:
          CheckpointError: a save failed for a reason the user fixes (a full disk, ...);
            the message names the step and the newest complete checkpoint.
        """
        with self._saving(step), _ORBAX:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta)), force=True)
            if parallel.cpu_run_slots():  # other threads may save next: finish this one now
                self._manager.wait_until_finished()
        self._pending = step

    @contextlib.contextmanager
    def _saving(self, step: int | None) -> Iterator[None]:
        """Turns a save failure a user fixes into `CheckpointError` (an earlier asynchronous
        save's failure surfaces here too, and is named as such)."""
        try:
            yield
        except Exception as e:
            if self._failed:
                return  # already raised once; Orbax reports it again on every wait
            self._failed = True
            latest = _finalised_steps(self.directory)
            failed = self._pending if self._pending not in (None, *latest[-1:]) else step
            error = save_failed(self.directory, failed, latest[-1] if latest else None, e)
            if error is None:
                raise
            raise error from e

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Restores ``(state, data_state, meta)`` of ``step`` into ``abstract_state``.

        Raises:
          CheckpointError: the step cannot be read (damaged); names the step before it.
        """
        try:
            with _ORBAX:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise restore_failed(self.directory, step, self.all_steps(), e) from e
        return restored["state"], restored["data"], restored["meta"]

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the metadata of ``step`` (config, metrics), cheap."""
        try:
            with _ORBAX:
                return self._manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise restore_failed(self.directory, step, self.all_steps(), e) from e

    def read_variables(self, step: int) -> dict[str, Any]:
        """The model variables of ``step`` as NumPy arrays (see `read_variables`)."""
        return read_variables(self.directory / str(step))

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are finalised."""
        with self._saving(None), _ORBAX:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self.wait()
        finally:
            with _ORBAX:
                self._manager.close()


def _finalised_steps(directory: Path) -> list[int]:
    """Steps whose folder is complete on disk (Orbax renames a step's temporary folder only
    once every item is written; on GCS it writes ``commit_success.txt`` last), ascending."""
    if not directory.is_dir():
        return []
    marker = "commit_success.txt" if is_remote(directory) else "_CHECKPOINT_METADATA"
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / marker).exists())


@contextlib.contextmanager
def _read_only_manager(directory: str | Path) -> Iterator[ocp.CheckpointManager]:
    """A manager that never writes (Orbax's notes that it is read-only silenced)."""
    with _quiet_orbax():
        manager = ocp.CheckpointManager(
            to_path(directory), item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                 save_interval_steps=0))
    try:
        with _quiet_orbax():
            yield manager
    finally:
        manager.close()


def kept_steps(directory: str | Path) -> list[int]:
    """The finalised steps in a ``checkpoints/`` folder, ascending ([] when there is no such
    folder; nothing is written, nothing of a run still training is cleaned up)."""
    if not to_path(directory).is_dir():
        return []
    with _read_only_manager(directory) as manager:
        return sorted(manager.all_steps())


def read_meta(directory: str | Path, step: int) -> dict[str, Any]:
    """The metadata item (config, convergence record, last eval) of ``step``.

    Raises:
      CheckpointError: the step's metadata cannot be read (a damaged checkpoint).
    """
    with _read_only_manager(directory) as manager:
        try:
            return manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise restore_failed(to_path(directory), step, sorted(manager.all_steps()), e) from e


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """`jax.ShapeDtypeStruct`s of ``tree`` (arrays or shape structs) with ``sharding``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Silences Orbax's per-read warning that an item folder has no step-level metadata of
    its own (expected when reading one item of a manager's step)."""
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)


def _tree_metadata(checkpointer: ocp.PyTreeCheckpointer, path: Path) -> Any:
    metadata = checkpointer.metadata(path)
    return getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)


def _restore_numpy(path: Path, select: tuple[str, ...] = ()) -> Any:
    """Restores an Orbax PyTree folder as NumPy arrays, only the top-level keys ``select``
    when given (a partial restore: the other keys are never read)."""
    with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
        tree = _tree_metadata(checkpointer, path)
        partial = bool(select) and isinstance(tree, Mapping)
        if partial:
            tree = {k: tree[k] for k in select if k in tree}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item=tree if partial else None, restore_args=restore_args,
            partial_restore=partial))
    return jax.tree.map(np.asarray, restored)


@contextlib.contextmanager
def _reading(step_dir: Path) -> Iterator[None]:
    """Turns a failure to read a step of a ``checkpoints/`` folder into `CheckpointError`
    (naming the step and the one before it), when the folder is one of this project's."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        if not step_dir.name.isdigit():
            raise
        directory = step_dir.parent
        raise restore_failed(directory, int(step_dir.name), _finalised_steps(directory),
                             e) from e


def state_shapes(step_dir: str | Path) -> dict[str, Any]:
    """Shapes of the model variables of a step, from the checkpoint's metadata alone.

    Args:
      step_dir: ``WORKDIR/checkpoints/<step>``.

    Returns:
      ``{"params": {...: tuple shape}, "batch_stats": {...}}`` (nothing is read but metadata).
    """
    step_dir = to_path(step_dir)
    with _reading(step_dir), _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
        tree = _tree_metadata(checkpointer, step_dir / "state")
        return {k: jax.tree.map(lambda m: tuple(m.shape), tree[k])
                for k in VARIABLE_COLLECTIONS if k in tree}


def read_variables(step_dir: str | Path) -> dict[str, Any]:
    """Model variables of one step of this project's checkpoints, without a training setup.

    Args:
      step_dir: ``WORKDIR/checkpoints/<step>``.

    Returns:
      ``{"params": nested dict, "batch_stats": nested dict}`` of NumPy arrays; the optimizer
      state, PRNG key and data-iterator state are not read.

    Raises:
      FileNotFoundError: ``step_dir`` holds no train state.
      CheckpointError: the step is damaged (the message names the step before it).
    """
    step_dir = to_path(step_dir)
    if not (step_dir / "state").is_dir():
        raise FileNotFoundError(f"no checkpointed train state in {step_dir}")
    with _reading(step_dir):
        restored = _restore_numpy(step_dir / "state", VARIABLE_COLLECTIONS)
    return {k: dict(restored.get(k) or {}) for k in VARIABLE_COLLECTIONS}


def _step_of(path: Path) -> int | None:
    name = path.name
    digits = name.rpartition("_")[2] if "_" in name else name
    return int(digits) if digits.isdigit() and path.is_dir() else None


def _find_with_params(tree: Any) -> Mapping[str, Any] | None:
    """The first mapping (breadth first) holding a ``params`` mapping."""
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, Mapping):
            if "params" in node and isinstance(node["params"], Mapping):
                return node
            queue.extend(v for v in node.values() if isinstance(v, Mapping))
    return None


def read_orbax_variables(path: str | Path) -> dict[str, Any]:
    """Restores model variables from any Orbax checkpoint folder, without a target.

    ``path`` may be a checkpoint written by a ``PyTreeCheckpointer`` (a folder with
    ``_METADATA``), a ``CheckpointManager`` step folder (this project's: its ``state`` item
    is read partially, see `read_variables`; others: items are tried in name order) or the
    manager's root folder (the highest numbered step is used). The restored tree must hold
    a ``params`` mapping at some depth (a train state's ``params`` field does).

    Args:
      path: checkpoint folder.

    Returns:
      ``{"params": nested dict, "batch_stats": nested dict}`` of NumPy arrays
      (``batch_stats`` only when the checkpoint has them).

    Raises:
      FileNotFoundError: no such folder.
      ValueError: no checkpoint with a ``params`` entry there.
    """
    path = to_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Orbax checkpoint folder not found: {path}")
    steps = [p for p in path.iterdir() if _step_of(p) is not None]
    if steps and not (path / "_METADATA").is_file():
        return read_orbax_variables(max(steps, key=_step_of))
    if (path / "state" / "_METADATA").is_file():
        variables = read_variables(path)
        return {k: v for k, v in variables.items() if v or k == "params"}
    candidates = [path] if (path / "_METADATA").is_file() else sorted(
        p for p in path.iterdir() if p.is_dir() and (p / "_METADATA").is_file())
    for candidate in candidates:
        found = _find_with_params(_restore_numpy(candidate))
        if found is not None:
            return {k: dict(found[k]) for k in VARIABLE_COLLECTIONS
                    if isinstance(found.get(k), Mapping)}
    raise ValueError(f"{path}: no Orbax checkpoint with a 'params' entry found there "
                     "(pass a checkpoint folder, a step folder or a CheckpointManager folder)")
