"""May this config resume the run saved in a workdir? Checked before anything is written.

A checkpoint's meaning depends on settings that must not change between the run that saved
it and the one that resumes it:

- the data position is saved as a count of *global batches* (grain's ``next_index``), so
  ``train.batch_size`` must match: a larger batch would skip examples, a smaller one repeat
  them;
- which examples are drawn and in which order: ``seed`` (the shuffle and the run's random
  numbers) and the ``data`` section (dataset, splits, the subset ``data.train_examples`` /
  ``data.subset_seed``, preprocessing, augmentation), except where the data lives
  (``data.data_dir``) and how it is read (``data.num_threads``, ``data.in_memory_mb``:
  both paths give the same batches);
- what the saved state is: ``model`` and ``init`` (step 0 is the initialisation), the
  optimizer (``train.optimizer.name``), and which optional parts the optimizer chain has
  (gradient clipping, weight decay, per-parameter learning-rate rules), whose states are
  saved with it.

The number of data shards (processes and devices) may change: process ``p`` of ``P`` reads
rows ``[p B/P, (p+1) B/P)`` of global batch ``s`` (`transfusion_jax.data.pipeline`), so the
saved position means the same global batch on any number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from transfusion_jax.checkpoints import kept_steps, read_meta
from transfusion_jax.config import ConfigError, to_dict
from transfusion_jax.paths import to_path
from transfusion_jax.runs import CHECKPOINTS

# Whole sections / keys that must match, and keys inside them that may change.
RESUME_KEYS = ("seed", "model", "init", "data", "train.batch_size", "train.optimizer.name")
MAY_CHANGE = ("data.data_dir", "data.num_threads", "data.in_memory_mb")
# Optional optimizer parts: resuming needs the same parts on (their states are saved).
CHAIN_PARTS = {
    "train.grad_clip_norm": lambda t: bool(t.get("grad_clip_norm")),
    "train.weight_decay": lambda t: bool(t.get("weight_decay")),
    "train.lr_multipliers / train.freeze": lambda t: bool(t.get("lr_multipliers")
                                                          or t.get("freeze")),
}


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out or {prefix: {}}
    return {prefix: value}


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(key, saved value, current value)]`` of the settings a resume must keep.

    Args:
      saved: the saved run's config as plain data (`transfusion_jax.config.to_dict`).
      current: the resuming config, the same way.
    """
    changes = []
    for key in RESUME_KEYS:
        old, new = _leaves(_get(saved, key), key), _leaves(_get(current, key), key)
        for leaf in sorted(set(old) | set(new)):
            if leaf not in MAY_CHANGE and old.get(leaf) != new.get(leaf):
                changes.append((leaf, old.get(leaf), new.get(leaf)))
    for key, has in CHAIN_PARTS.items():
        before, after = has(saved.get("train", {})), has(current.get("train", {}))
        if before != after:
            changes.append((key, "on" if before else "off", "on" if after else "off"))
    return changes


def check_resume(config: ml_collections.ConfigDict, workdir: str | Path) -> int | None:
    """The newest saved step of ``workdir`` if ``config`` may resume it; None when there is
    nothing to resume. Reads only.

    Raises:
      ConfigError: one line naming every setting that differs, with both values.
      CheckpointError: the newest step's metadata cannot be read.
    """
    steps = kept_steps(to_path(workdir) / CHECKPOINTS)
    if not steps:
        return None
    saved = read_meta(to_path(workdir) / CHECKPOINTS, steps[-1]).get("config", {})
    changes = changed_settings(saved, to_dict(config))
    if changes:
        listed = "; ".join(f"{key} was {old!r}, now {new!r}" for key, old, new in changes)
        key, old, _ = changes[0]
        shown = old if isinstance(old, str) else repr(old)
        fix = (f"--config.{key}={shown}" if "/" not in key and not isinstance(old, dict)
               else "the saved settings")
        why = (" (the saved data position counts batches of the saved size, so a new size "
               "would skip or repeat examples)" if any(k == "train.batch_size"
                                                       for k, _, _ in changes) else "")
        raise ConfigError(f"cannot resume the run in {workdir} (step {steps[-1]}): {listed}"
                          f"{why}. Resume with {fix}, or choose a new --workdir")
    return steps[-1]
