"""Orbax checkpoints of a run: train state, data-iterator state and metadata per step.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta}``. The last ``keep_last`` steps are
kept, step 0 (the initialisation, which every similarity-to-init and weight-change analysis
needs) always, and every step that is a multiple of ``keep_every`` (a trajectory for
similarity sweeps). Saves are asynchronous and always awaited before the process exits, so no
``*.orbax-checkpoint-tmp*`` folder survives a clean exit; a folder left by a killed process
is never read (Orbax only lists finalised steps) and is removed on the next start.
Restoring always goes into an abstract target (shapes, dtypes and shardings), never into a
guessed structure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from transfusion_jax.checkpoint_errors import restore_failed, save_failed

ITEMS = ("state", "data", "meta")


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
        self.directory = Path(directory).absolute()
        from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

        keep = [policy.LatestN(keep_last), policy.CustomSteps([0])]
        if keep_every:
            keep.append(policy.EveryNSteps(keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy.AnyPreservationPolicy(keep), create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
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
        with self._saving(step):
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta)), force=True)
        self._pending = step

    @contextlib.contextmanager
    def _saving(self, step: int | None):
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
            return self._manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise restore_failed(self.directory, step, self.all_steps(), e) from e

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are finalised."""
        with self._saving(None):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()


def _finalised_steps(directory: Path) -> list[int]:
    """Steps whose folder is complete on disk (Orbax renames a step's temporary folder only
    once every item is written), ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """`jax.ShapeDtypeStruct`s of ``tree`` (arrays or shape structs) with ``sharding``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)
