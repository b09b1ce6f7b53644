"""The one place that knows about devices, meshes and shardings.

Data parallelism is expressed as `jax.jit` over a 1-D `Mesh` whose single axis is named
``data`` and spans every device of every process. Arrays whose leading axis is the batch are
sharded along it (`batch_sharding`); parameters and optimizer state are replicated
(`replicated`). Under `jit`, a mean over the batch axis (a loss, BatchNorm statistics) is a
global mean: XLA inserts the all-reduce, so no `axis_name` plumbing is needed.

Multi-process runs call `initialize_distributed` first (a no-op for one process). Only
process 0 writes files (`is_writer`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


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


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


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


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places a pytree (identical on every process) whole on every device of every process."""
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)
