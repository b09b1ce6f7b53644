"""Convergence speed: the first step at which an eval metric reaches a threshold."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from transfusion_jax.config import ConfigError


@dataclasses.dataclass
class ConvergenceTracker:
    """Records the first eval step where ``metric`` reaches ``threshold``.

    ``mode="max"`` means reached when ``value >= threshold`` (accuracy, AUC); ``"min"``
    when ``value <= threshold`` (loss). NaN values never count as reached.
    """

    metric: str
    threshold: float
    mode: str = "max"
    step: int | None = None
    value: float | None = None

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ConfigError(f"convergence.mode must be 'max' or 'min', got {self.mode!r}")

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Feeds one eval; returns True if the threshold is reached for the first time now."""
        if self.step is not None:
            return False
        if self.metric not in metrics:
            raise ConfigError(f"convergence.metric={self.metric!r} is not an eval metric; eval "
                           f"metrics are: {', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        if math.isnan(value):
            return False
        reached = value >= self.threshold if self.mode == "max" else value <= self.threshold
        if reached:
            self.step, self.value = int(step), value
        return reached

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``steps_to_threshold`` is None when never reached."""
        return {"metric": self.metric, "threshold": self.threshold, "mode": self.mode,
                "steps_to_threshold": self.step, "value_at_threshold": self.value,
                "reached": self.step is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvergenceTracker:
        return cls(d["metric"], d["threshold"], d["mode"], d["steps_to_threshold"],
                   d["value_at_threshold"])
