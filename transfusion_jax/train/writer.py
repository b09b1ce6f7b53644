"""Writes metric summaries: ``metrics.jsonl`` always, TensorBoard events when available.

Only the writing process (process 0) writes; on the others every call is a no-op. Each
JSONL line is ``{"step": int, "split": "train" | "eval" | "convergence", "time": float,
<name>: value}``; the one ``convergence`` line marks the step where the threshold was first
reached (or, at the last step, that it never was: ``steps_to_threshold`` null).
TensorBoard events use ``tensorboardX`` (the optional ``tensorboard`` extra), which needs
no TensorFlow.

A remote workdir (``gs://``) has no appendable files: there the lines are kept in memory and
the whole file is uploaded by `MetricWriter.flush`, which the training loops call before
every checkpoint (so a resumed run finds every line up to its checkpoint) and at the end.
TensorBoard events are written only for a local workdir.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transfusion_jax import parallel
from transfusion_jax.paths import is_remote, to_path, write_text

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


class MetricWriter:
    """Appends summaries to ``workdir/metrics.jsonl`` (+ TensorBoard under ``workdir/tb``)."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.path = to_path(workdir) / "metrics.jsonl"
        self._enabled = parallel.is_writer()
        self._remote = is_remote(self.path)
        self._lines: list[str] | None = None  # remote: the file's lines, uploaded by flush()
        self._tb = None
        self._tb_class = None  # the events file is opened at the first write, not before
        self._tb_dir = self.path.parent / "tb"
        if self._enabled and tensorboard and self._remote:
            log.info("TensorBoard events are written only for a local workdir; %s is remote",
                     self.path.parent)
        elif self._enabled and tensorboard:
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
        if self._remote:
            self._remote_lines().append(json.dumps(record))
        else:
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
        if not self._enabled:
            return
        if self._remote:
            lines = self._remote_lines()
            lines[:] = [line for line in lines if json.loads(line)["step"] <= step]
            self.flush()
            return
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def _remote_lines(self) -> list[str]:
        """The remote file's lines (read once), with the lines written since."""
        if self._lines is None:
            text = self.path.read_text() if self.path.exists() else ""
            self._lines = [line for line in text.splitlines() if line]
        return self._lines

    def flush(self) -> None:
        """Uploads a remote ``metrics.jsonl`` whole (a no-op for a local one, whose lines are
        appended as written)."""
        if self._enabled and self._remote and self._lines is not None:
            write_text(self.path, "".join(line + "\n" for line in self._lines))

    def close(self) -> None:
        self.flush()
        if self._tb is not None:
            self._tb.close()
