"""Runs of a sweep trained side by side on a CPU: one thread and one CPU device per run.

On a CPU, stacking runs into one program (`transfusion_jax.train.group`) is slower than
training them one at a time: vmapped over per-run kernels, XLA's convolution becomes a
grouped convolution, and the matrix-product form the group uses instead runs below one
run's speed. One small run does not keep two cores busy either (the quickstart model, batch
32: 854 examples/s on 2 cores, 653 on 1). What does pay off is XLA:CPU running one program
per device: with a CPU device per core (`parallel.add_cpu_run_slots`), runs each trained by
the single-run loop in a thread of their own, on a device of their own
(`parallel.on_device`), step at the same time, one per core, and one run's host work
(evaluation input, metrics, plots, checkpoints) overlaps another's steps: 8 runs trained at
1,300 examples/s against 923 one after another, and the default study took 317 s against
382 (1.21x; 2 cores, `benchmarks/grid_throughput.py --study`). Each run is the very program
it would be alone, so its files equal a run trained one after another
(`tests/test_side_by_side.py`).

The command's log names the run on each of its lines (``[init=random,seed=3] step ...``).
A run that raises stops the sweep as one after another would: runs not yet started are
dropped, the running ones finish, then the error is raised. Ctrl-C stops the process at
once, as a kill would: each run resumes from its newest checkpoint when the command is run
again (the checkpoints' own guarantee).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

import jax

from transfusion_jax import parallel

log = logging.getLogger(__name__)
_thread = threading.local()  # .label: the run this thread trains, for its log lines


class _RunLabel(logging.Filter):
    """Prefixes each log line emitted by a run's thread with ``[run name]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = getattr(_thread, "label", None)
        if label and not getattr(record, "run_labelled", False):
            record.msg, record.run_labelled = f"[{label}] {record.msg}", True
        return True


def train_side_by_side(names: Sequence[str], train: Callable[[int], str],
                       devices: Sequence[jax.Device]) -> dict[str, str]:
    """Calls ``train(i)`` for every run ``i``, at most ``len(devices)`` at a time, each in a
    thread of its own with a device of its own (`parallel.on_device`).

    Args:
      names: the runs' names, for the log.
      train: trains run ``i`` alone and returns its final status (``"finished"`` or
        ``"failed"``), as the sweep does one after another.
      devices: one CPU device per run that may train at once (`parallel.cpu_run_slots`).

    Returns:
      ``{name: status}``.

    Raises:
      Whatever a run's ``train`` raised first, once the runs already going have ended.
    """
    free: queue.SimpleQueue[jax.Device] = queue.SimpleQueue()
    for device in devices:
        free.put(device)

    stop = threading.Event()  # a run raised: runs not started yet are not started

    def one(i: int) -> str | None:
        device = free.get()
        _thread.label = names[i]
        try:
            if stop.is_set():
                return None
            with parallel.on_device(device):
                return train(i)
        except BaseException as e:
            stop.set()
            log.error("stopped the sweep (%s); the runs in progress finish first",
                      type(e).__name__)
            raise
        finally:
            _thread.label = None
            free.put(device)

    log.info("sweep: %d runs, %d side by side, each on a CPU device of its own "
             "(sweep.cpu_side_by_side; sweep.vectorize=False trains one at a time)",
             len(names), len(devices))
    label = _RunLabel()
    handlers = logging.getLogger("transfusion_jax").handlers + logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(label)
    statuses: dict[str, str] = {}
    start = time.perf_counter()
    pool = concurrent.futures.ThreadPoolExecutor(len(devices), "sweep-run")
    try:
        futures = {pool.submit(one, i): name for i, name in enumerate(names)}
        for future in concurrent.futures.as_completed(futures):
            status = future.result()
            if status is None:  # not started: another run raised, which is raised below
                continue
            statuses[futures[future]] = status
            done = len(statuses)
            left = (time.perf_counter() - start) / done * (len(names) - done)
            log.info("sweep: %d/%d runs done%s", done, len(names),
                     f", about {left / 60:.1f} min left" if done < len(names) else "")
    except KeyboardInterrupt:
        _stop_now(pool)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        for handler in handlers:
            handler.removeFilter(label)
    return statuses


def _stop_now(pool: concurrent.futures.ThreadPoolExecutor) -> None:
    """Ctrl-C: the threads cannot be interrupted, so the process ends here, as if killed."""
    pool.shutdown(wait=False, cancel_futures=True)
    log.error("interrupted: the runs in progress stop here; run the same command again to "
              "resume them from their newest checkpoints")
    logging.shutdown()
    os._exit(130)
