"""A one-line progress report for long runs: step, throughput, ETA, last eval."""

from __future__ import annotations

import datetime
import time


class Progress:
    """Measures examples/s between calls and formats the progress line."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self.examples_per_sec = float("nan")

    def line(self, step: int, loss: float, accuracy: float, last_eval: str = "") -> str:
        """Updates the rate from the steps done since the previous call and formats a line."""
        now = time.perf_counter()
        if step > self._last_step:
            self.examples_per_sec = (step - self._last_step) * self.batch_size / (
                now - self._last_time)
        self._last_step, self._last_time = step, now
        steps_left = self.total_steps - step
        eta = (datetime.timedelta(seconds=round(steps_left * self.batch_size
                                                / self.examples_per_sec))
               if self.examples_per_sec == self.examples_per_sec and self.examples_per_sec
               else "?")
        pct = 100.0 * step / self.total_steps
        text = (f"step {step}/{self.total_steps} ({pct:.0f}%) | loss {loss:.4f} | "
                f"acc {accuracy:.3f} | {self.examples_per_sec:.0f} ex/s | ETA {eta}")
        return f"{text} | last eval {last_eval}" if last_eval else text

    def restart_clock(self, step: int) -> None:
        """Excludes time spent since the last call (evaluation, checkpointing) from the rate."""
        self._last_step, self._last_time = step, time.perf_counter()
