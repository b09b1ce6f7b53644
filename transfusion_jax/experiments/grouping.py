"""Which runs of a sweep train together: groups of runs with equal shared settings.

`plan_groups` partitions a sweep's runs by a key (for training, the settings every run of a
group must share: `transfusion_jax.train.group.rules.shared_settings`), keeping the grid's
order, and splits a group larger than ``max_size`` into near-equal parts. A run left alone
is trained by itself; `why_alone` says why, naming the settings in which it differs from the
closest other run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Run = TypeVar("Run")


def plan_groups(runs: Sequence[Run], key: Callable[[Run], Any],
                max_size: int = 0) -> list[list[Run]]:
    """Runs with equal ``key`` (JSON data) grouped, groups in order of their first run.

    Args:
      runs: the runs to train.
      key: what runs of a group must share, as JSON-serialisable data.
      max_size: at most this many runs per group (0 = no limit); a larger group is split
        into ``ceil(n / max_size)`` parts of near-equal size.

    Returns:
      The groups (lists of runs, in the order given); a run alone is a group of one.
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(key(run), sort_keys=True), []).append(run)
    out = []
    for members in groups.values():
        parts = -(-len(members) // max_size) if max_size else 1
        size = -(-len(members) // parts)
        out.extend(members[i:i + size] for i in range(0, len(members), size))
    return out


def why_alone(run: Run, runs: Sequence[Run], differences: Callable[[Run, Run], list[str]],
              name: Callable[[Run], str]) -> str:
    """Why ``run`` trains by itself: the settings it does not share with the closest of the
    other ``runs`` (``differences(a, b)`` lists them), or that no other run is left."""
    others = [r for r in runs if r is not run]
    if not others:
        return "no other run of this shard is left to train"
    diffs = [(differences(run, other), other) for other in others]
    closest, other = min(diffs, key=lambda d: len(d[0]))
    if not closest:
        return "its group was split by sweep.max_group_size"
    shown = ", ".join(closest[:4]) + (", ..." if len(closest) > 4 else "")
    return f"it differs from every other run, from the closest ({name(other)}) in {shown}"
