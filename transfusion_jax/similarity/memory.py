"""Memory the engine is about to use, checked against what the machine has before allocating.

Exact streaming accumulators hold a ``d_i x d_j`` block per compared pair: over flattened conv
maps that grows fast (one 32x32x64 map flattened is 65,536 features, and its self block alone
16 GiB in float32). An allocation past the machine's memory does not raise in Python: the
kernel's OOM killer ends the process without a word. So the size is estimated first and, above
what is available, one `SimilarityMemoryError` names it, its formula and what shrinks it.
"""

from __future__ import annotations

import os

import jax

from transfusion_jax.similarity.validation import SimilarityInputError


class SimilarityMemoryError(SimilarityInputError):
    """The requested similarity state does not fit in the available memory."""


def host_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else free physical pages, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Free memory where arrays of `device` (default: JAX's first device) live, or None.

    A GPU/TPU reports its allocator's limit minus what is in use; a CPU device lives in host
    memory.
    """
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return host_available_bytes()


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"


def check_fits(needed: int, *, what: str, formula: str, remedies: str,
               limit: int | None = None, device: jax.Device | None = None) -> None:
    """Raises `SimilarityMemoryError` when `needed` bytes exceed `limit` (default: available).

    Args:
      needed: estimated bytes.
      what: what would be allocated (for the message).
      formula: how `needed` was computed, with its numbers.
      remedies: the choices that shrink it.
      limit: bytes allowed; None measures what `device` has available.
      device: where the arrays would live.
    """
    limit = available_bytes(device) if limit is None else limit
    if limit is None or needed <= limit:
        return
    raise SimilarityMemoryError(
        f"{what} needs about {gib(needed)} ({formula}), more than the {gib(limit)} "
        f"available. {remedies}")
