"""Writes metric summaries: ``metrics.jsonl`` always, TensorBoard events when available.

Only the writing process (process 0) writes; on the others every call is a no-op. Each
JSONL line is ``{"step": int, "split": "train" | "eval" | "convergence", "time": float,
<name>: value}``; the one ``convergence`` line marks the step where the threshold was first
reached (or, at the last step, that it never was: ``steps_to_threshold`` null).
TensorBoard events use ``tensorboardX`` (the optional ``tensorboard`` extra), which needs
no TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transfusion_jax import parallel

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


class MetricWriter:
    """Appends summaries to ``workdir/metrics.jsonl`` (+ TensorBoard under ``workdir/tb``)."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self._enabled = parallel.is_writer()
        self._tb = None
        self._tb_class = None  # the events file is opened at the first write, not before
        self._tb_dir = Path(workdir) / "tb"
        if self._enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.info("tensorboardX not installed: no TensorBoard events "
                         "(pip install 'transfusion_jax[tensorboard]')")
            else:
                self._tb_class = SummaryWriter

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Appends one summary line (and TensorBoard scalars ``split/name``)."""
        if not self._enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time(),
                  **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is None and self._tb_class is not None:
            self._tb = self._tb_class(str(self._tb_dir))
        if self._tb is not None:
            for name, value in metrics.items():
                if math.isfinite(float(value)):  # e.g. steps_to_threshold of a run not there
                    self._tb.add_scalar(f"{split}/{name}", float(value), int(step))

    def truncate_after(self, step: int) -> None:
        """Drops lines past ``step`` (a resumed run rewrites them, so none are doubled)."""
        if not self._enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
