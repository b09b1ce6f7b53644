"""Which runs can train together: equal configs except for what each run owns.

A group is one compiled program, so its runs must agree on everything that fixes the
program's structure or the loop's schedule: the model (architecture, width, dtype), the
data (dataset, input shape, batch size, subset, augmentation, eval split), the number of
steps, the update rule (optimizer and its constants, weight decay and its mask, gradient
clipping, per-parameter factors and freezing), the evaluators and the checkpoint and log
cadence. What each run owns, and may differ (`PER_RUN`):

- ``seed``: its random draws and its data order;
- ``init``: its initialisation (every strategy, including those that read a source);
- ``train.schedule``: its learning-rate schedule (name and values: each run's rates are
  read from a table of its own schedule's values).

Sections no training reads (``job``, ``sweep``, ``similarity``, ``analysis``) are ignored.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from transfusion_jax.config import to_dict

PER_RUN = ("seed", "init", "train.schedule")
NOT_TRAINING = ("job", "sweep", "similarity", "analysis")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def shared_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings runs trained together must share: ``{dotted key: JSON value}``.

    Two runs can train together exactly when their `shared_settings` are equal.
    """
    skip = PER_RUN + NOT_TRAINING
    return {k: v for k, v in _flatten(to_dict(config)).items()
            if not any(k == s or k.startswith(f"{s}.") for s in skip)}


def differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """The shared settings in which ``a`` and ``b`` differ (dotted keys, sorted)."""
    sa, sb = shared_settings(a), shared_settings(b)
    return sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
