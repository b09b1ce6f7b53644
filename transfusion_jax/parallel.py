"""The one place that knows about devices, meshes and shardings.

Data parallelism is expressed as `jax.jit` over a 1-D `Mesh` whose single axis is named
``data`` and spans every device of every process. Arrays whose leading axis is the batch are
sharded along it (`batch_sharding`); parameters and optimizer state are replicated
(`replicated`). Under `jit`, a mean over the batch axis (a loss, BatchNorm statistics) is a
global mean: XLA inserts the all-reduce, so no `axis_name` plumbing is needed.

Runs of a study trained together (`transfusion_jax.train.group`) use a 2-D mesh,
``runs`` x ``data`` (`grid_mesh`): states stacked on a leading run axis are sharded over
``runs`` (`run_sharding`), each run's batch over ``data`` within its row of devices
(`run_batch_sharding`). The ``data`` axis is the one that spans processes, so every process
holds its rows of every run's batch, as the input pipeline reads them.

A sweep on a CPU trains its runs side by side (`transfusion_jax.experiments.side_by_side`):
`add_cpu_run_slots` gives the process one CPU device per core before JAX starts, each run's
thread takes one of them (`on_device`), and every mesh made without explicit devices
(`default_devices`) spans that one device, or the first CPU device outside such a thread.

Multi-process runs call `initialize_distributed` first (a no-op for one process). Only
process 0 writes files (`is_writer`).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
RUNS_AXIS = "runs"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Starts `jax.distributed` when the run spans several processes.

    Arguments left as None are read from ``TFJ_COORDINATOR``, ``TFJ_NUM_PROCESSES`` and
    ``TFJ_PROCESS_ID``. With ``TFJ_DISTRIBUTED=auto`` (TPU VM slices, SLURM), JAX detects the
    cluster itself. With none of these set the run is single-process and this does nothing.
    On CPU the collectives go through gloo.

    Args:
      coordinator_address: ``host:port`` of process 0.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
    """
    coordinator_address = coordinator_address or os.environ.get("TFJ_COORDINATOR")
    if num_processes is None and "TFJ_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["TFJ_NUM_PROCESSES"])
    if process_id is None and "TFJ_PROCESS_ID" in os.environ:
        process_id = int(os.environ["TFJ_PROCESS_ID"])
    explicit = coordinator_address is not None and (num_processes or 1) > 1
    auto = os.environ.get("TFJ_DISTRIBUTED") == "auto"
    if not (explicit or auto) or jax.distributed.is_initialized():
        return
    if explicit:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()


_cpu_run_slots = 0  # CPU devices `add_cpu_run_slots` made for runs side by side (0: none)
_thread = threading.local()  # .device: the one device of this thread's run (`on_device`)


def add_cpu_run_slots(count: int) -> int:
    """Lets ``count`` runs train side by side on a CPU, one per core; call before JAX starts.

    XLA:CPU runs one program at a time per device, and one small model's step keeps a
    second core only partly busy (quickstart model, batch 32: 854 examples/s on 2 cores,
    653 pinned to 1), so runs on two CPU devices train faster at once than one after
    another (8 runs: 1,300 examples/s against 923, `benchmarks/grid_throughput.py`). This
    asks JAX for ``count`` CPU devices (``jax_num_cpu_devices``);
    `default_devices` keeps every mesh on the first of them unless a thread runs
    `on_device`, so a run trains on one device as it would without slots.

    Returns:
      How many slots there are: ``count``; 0 when ``count < 2``, when the user set the CPU
      device count (``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``), when JAX
      already started, in a multi-process run, or when JAX's default backend is not the CPU.
    """
    global _cpu_run_slots
    from jax._src import xla_bridge

    if (count < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or xla_bridge.backends_are_initialized() or jax.distributed.is_initialized()):
        return 0
    jax.config.update("jax_num_cpu_devices", count)
    _cpu_run_slots = count if jax.default_backend() == "cpu" else 0
    return _cpu_run_slots


def cpu_run_slots() -> list[jax.Device]:
    """The CPU devices runs may train on side by side (`add_cpu_run_slots`; empty: none)."""
    return jax.devices()[:_cpu_run_slots] if _cpu_run_slots else []


@contextlib.contextmanager
def on_device(device: jax.Device) -> Iterator[None]:
    """Within the block, in this thread, `default_devices` is ``[device]``: a run trained
    here (its meshes, evaluations, checkpoints) uses that device alone."""
    before = getattr(_thread, "device", None)
    _thread.device = device
    try:
        yield
    finally:
        _thread.device = before


def default_devices() -> list[jax.Device]:
    """The devices a mesh spans when none are given: this thread's `on_device` device; with
    CPU run slots, the first CPU device; otherwise every device of every process."""
    device = getattr(_thread, "device", None)
    if device is not None:
        return [device]
    return jax.devices()[:1] if _cpu_run_slots else jax.devices()


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over `devices` (default: `default_devices`, every device of
    every process unless runs train side by side on CPU devices)."""
    devices = list(default_devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def grid_mesh(num_runs: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2-D mesh ``(runs, data)`` for ``num_runs`` runs trained side by side.

    The ``runs`` axis takes ``gcd(num_runs, devices per process)`` devices, so it divides the
    run axis and stays within a process; the ``data`` axis takes the rest, across processes.
    On one device both axes have size 1.

    Args:
      num_runs: the length of the stacked run axis.
      devices: default every device of every process (each process the same number).

    Returns:
      A `Mesh` with axes ``("runs", "data")``.
    """
    devices = sorted(default_devices() if devices is None else devices,
                     key=lambda d: (d.process_index, d.id))
    processes = sorted({d.process_index for d in devices})
    per_process = len(devices) // len(processes)
    if per_process * len(processes) != len(devices):
        raise ValueError(f"{len(devices)} devices are not spread evenly over "
                         f"{len(processes)} processes")
    runs = math.gcd(num_runs, per_process)
    grid = (np.asarray(devices, dtype=object)
            .reshape(len(processes), runs, per_process // runs)
            .transpose(1, 0, 2).reshape(runs, -1))
    return Mesh(grid, (RUNS_AXIS, DATA_AXIS))


def run_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays stacked on a leading run axis (states, per-run scalars)."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS))


def run_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of stacked batches ``(runs, batch, ...)``: runs over ``runs``, rows over
    ``data``."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding for arrays held whole on every device (params, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def num_data_shards(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return mesh.shape[DATA_AXIS]


def is_writer() -> bool:
    """True in the one process that writes files (process 0)."""
    return jax.process_index() == 0


def make_global_batch(mesh: Mesh, local_batch: Any) -> Any:
    """Turns this process's rows of a batch (a pytree of NumPy arrays) into global arrays.

    Args:
      mesh: the data mesh.
      local_batch: pytree of arrays of shape ``(B / process_count, ...)``.

    Returns:
      The same pytree of `jax.Array` of shape ``(B, ...)`` sharded over ``data``.
    """
    sharding = batch_sharding(mesh)
    shards = num_data_shards(mesh)

    def put(x: np.ndarray) -> jax.Array:
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        if global_shape[0] % shards:
            raise ValueError(
                f"global batch size {global_shape[0]} is not divisible by the {shards} "
                "devices of the data mesh; choose a batch size that is a multiple of "
                f"{shards}."
            )
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, local_batch)


def make_run_batch(mesh: Mesh, local_batch: Any) -> Any:
    """Stacked batches ``(runs, B / process_count, ...)`` of this process -> global arrays
    ``(runs, B, ...)`` sharded by `run_batch_sharding` (the rows as in `make_global_batch`)."""
    sharding = run_batch_sharding(mesh)

    def put(x: np.ndarray) -> jax.Array:
        global_shape = (x.shape[0], x.shape[1] * jax.process_count(), *x.shape[2:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, local_batch)


def place_runs(mesh: Mesh, tree: Any) -> Any:
    """Places a pytree stacked on a leading run axis (identical on every process) sharded
    by `run_sharding`."""
    return _place(tree, run_sharding(mesh))


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places a pytree (identical on every process) whole on every device of every process."""
    return _place(tree, replicated(mesh))


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Host copies of ``tree``'s leaves (the same on every process) laid out by ``sharding``."""
    def put(x: Any) -> jax.Array:
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)
