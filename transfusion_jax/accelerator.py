"""Which backend a job runs on: its first log line, and a stop when an accelerator was
expected but JAX found only the CPU.

Every job logs `describe_devices` when JAX starts (`api.setup_jax`), e.g.
``backend: gpu, devices: 8 x NVIDIA H100 80GB HBM3 (process 0 of 1)``. A plain
``pip install jax`` is JAX's CPU build: on a GPU machine it trains, slowly, on the host.
With ``TFJ_EXPECT_ACCELERATOR=1`` (set by ``launch/gpu_multiprocess.sh`` and the TPU-VM
launcher) such a run stops at once with `AcceleratorError`, one ``error:`` line naming the
install command, before anything is written.
"""

from __future__ import annotations

import os
from collections import Counter

import jax

EXPECT_ENV = "TFJ_EXPECT_ACCELERATOR"


class AcceleratorError(RuntimeError):
    """An accelerator was expected (``TFJ_EXPECT_ACCELERATOR=1``) and JAX found only the
    CPU."""


def accelerator_expected() -> bool:
    """True when ``TFJ_EXPECT_ACCELERATOR`` is set to 1 (or true, yes)."""
    return os.environ.get(EXPECT_ENV, "").strip().lower() in ("1", "true", "yes")


def describe_devices() -> str:
    """``backend: B, devices: N x KIND (process I of P)``: JAX's default backend and every
    device of every process by kind (and this process's share when there are several)."""
    kinds = Counter(d.device_kind for d in jax.devices())
    devices = ", ".join(f"{n} x {kind}" for kind, n in kinds.items())
    where = f"process {jax.process_index()} of {jax.process_count()}"
    if jax.process_count() > 1:
        where = f"{jax.local_device_count()} on this process, {where}"
    return f"backend: {jax.default_backend()}, devices: {devices} ({where})"


def require_accelerator() -> None:
    """With ``TFJ_EXPECT_ACCELERATOR=1``, stops a job whose JAX found only the CPU.

    Raises:
      AcceleratorError: naming the install commands of JAX's GPU and TPU builds.
    """
    if not accelerator_expected() or jax.default_backend() != "cpu":
        return
    forced = os.environ.get("JAX_PLATFORMS", "")
    why = f" (JAX_PLATFORMS={forced} is set: unset it)" if forced else ""
    raise AcceleratorError(
        f"{EXPECT_ENV}=1 but JAX {jax.__version__} found only the CPU{why}. Install JAX's "
        'accelerator build: pip install -U "jax[cuda12]" on a GPU machine (and check that '
        'nvidia-smi lists the GPUs), pip install -U "jax[tpu]" on a TPU VM; or unset '
        f"{EXPECT_ENV} to train on the CPU")
